"""The CLI's contract: --help without TensorFlow, and bad input -> one line on stderr, exit 2, no traceback,
nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from edgeship.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "for sub in ('models', 'export', 'quantize', 'validate', 'run'):\n"
        "    try:\n        main([sub, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'onnx', 'coremltools', 'tf2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: edgeship" in proc.stdout


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "edgeship", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("edgeship ")


def _one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    assert code == exit_code
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeship: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def test_missing_model_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "--model", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "not found", "nope.keras")


def test_file_that_is_not_a_model(capsys, tmp_path):
    fake = tmp_path / "fake.keras"
    fake.write_text("not a zip")
    code, _, err = run_cli(capsys, "export", "--model", str(fake), "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "not a keras model")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    code, _, err = run_cli(capsys, "export", "--model", str(other), "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "not a model edgeship can load")


def test_unknown_format(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "--formats", "tflite,pdf", "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "unknown format 'pdf'", "tflite, onnx, coreml")
    assert not (tmp_path / "o").exists()


def test_unsupported_precision_for_format(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "--formats", "onnx", "--precision", "fp16", "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "onnx export makes fp32")


def test_unknown_variant_suggests(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v2_1.0_225", "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "unknown model variant", "mobilenet_v2_1.0_224")


def test_output_directory_not_writable(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "export", "--formats", "onnx", "--out", str(blocker))
    _one_line_error(code, err, "is a file", exit_code=3)  # the environment (exit 3), not the model
    code, _, err = run_cli(capsys, "export", "--formats", "onnx", "--out", str(blocker / "sub"))
    _one_line_error(code, err, "cannot write to --out directory", exit_code=3)


def test_lambda_model_refused_without_trust(capsys, tmp_path, lambda_model_path):
    code, _, err = run_cli(capsys, "export", "--model", str(lambda_model_path), "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "Lambda", "--trust-model")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_bad_labels_file(capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    code, _, err = run_cli(capsys, "export", "--labels", str(labels), "--formats", "onnx", "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "2 labels", "10 classes")


@pytest.fixture(scope="module")
def lambda_model_path(tmp_path_factory) -> Path:
    from edgeship._tf import keras

    k = keras()
    inp = k.Input((32, 32, 3))
    x = k.layers.Lambda(lambda t: t * 2.0)(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(3)(x))
    path = tmp_path_factory.mktemp("lambda") / "lambda.keras"
    model.save(path)
    return path
