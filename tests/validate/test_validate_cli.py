"""``edgeship validate`` and ``edgeship run``: exit codes, reports on disk, skipped never counted as passed, and
bad input as one line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from edgeship.cli import main
from edgeship.export import export
from edgeship.machine import KernelFamily, describe_machine
from edgeship.models.loading import load_model
from edgeship.validate.pipeline import validate
from edgeship.validate.results import Status


@pytest.fixture(scope="module")
def exported(demo_export):
    """The demo's default float files (the session's one export, conftest.py)."""
    loaded = load_model()
    return loaded, demo_export(formats=["tflite", "onnx", "coreml"]).out_dir


def _run(capsys, *args):
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_validate_passes_writes_four_reports_and_runs_coreml(capsys, exported, tmp_path):
    """Core ML runs everywhere: in Core ML on macOS, by the NumPy reference executor elsewhere (and says so)."""
    from edgeship.types import Format
    from edgeship.runtimes import RUNTIME_NAMES

    _, out = exported
    code, stdout, err = _run(capsys, "validate", "--artifacts", str(out), "--report", str(tmp_path / "r"),
                             "--iterations", "5")
    assert code == 0, err
    assert "passed" in stdout and RUNTIME_NAMES[Format.COREML] in stdout
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["schema_version"] == 2 and data["passed"] is True and data["data"]["count"] == 360
    machine = data["machine"]  # where it was measured: this machine, whatever its ISA
    assert machine == describe_machine().to_dict() and machine["int8_kernel_family"] in {f.value for f in KernelFamily}
    assert {"onnxruntime", "ai-edge-litert", "coremltools", "tensorflow", "numpy"} <= data["versions"].keys()
    statuses = {a["format"]: a["status"] for a in data["artifacts"]}
    assert statuses == {"tflite": "passed", "onnx": "passed", "coreml": "passed"}
    for a in data["artifacts"]:
        assert a["latency_ms"]["p50"] > 0 and a["latency_ms"]["load"] > 0 and a["peak_rss_bytes"] > 0
        assert a["metrics"]["top1_agreement"] >= (0.995 if a["precision"] == "fp16" else 1.0)
        assert a["metrics"]["accuracy_top1"] > 0.95
    (coreml,) = [a for a in data["artifacts"] if a["format"] == "coreml"]
    assert coreml["runtime"] == RUNTIME_NAMES[Format.COREML]
    if coreml["runtime"] == "coreml-reference":
        assert "reference execution" in coreml["reason"] and "not Apple's kernels" in coreml["reason"]
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert int(suite.find("testsuite").get("skipped")) == 0
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["machine.int8_kernel_family"] == machine["int8_kernel_family"]
    assert props["version.onnxruntime"] == data["versions"]["onnxruntime"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<html" in html.lower() and '<section id="machine">' in html
    md = (tmp_path / "r" / "report.md").read_text()
    assert "PASS" in md and f"int8 kernels: {machine['int8_kernel_family']}" in md.replace("\\", "")


def test_require_turns_a_skip_into_a_failure(capsys, exported, monkeypatch):
    """A Core ML runtime that cannot run here (as Core ML itself off macOS) skips; --require makes that fail."""
    from edgeship.types import Format
    from edgeship import runtimes
    from edgeship.runtimes.runner import Unavailable
    from edgeship.runtimes.coreml import CoreMLRunner

    class NoCoreML(CoreMLRunner):
        def _open(self):
            raise Unavailable("Core ML prediction needs macOS")

    monkeypatch.setitem(runtimes._FACTORIES, Format.COREML, lambda: NoCoreML)
    _, out = exported
    # in process: the patched runner class lives in this process (by default each runtime runs in its own)
    code, stdout, _ = _run(capsys, "validate", "--artifacts", str(out), "--iterations", "2", "--in-process")
    assert code == 0 and "skipped" in stdout  # a skip alone passes...
    code, stdout, _ = _run(capsys, "validate", "--artifacts", str(out), "--require", "coreml", "--iterations", "2",
                           "--in-process")
    assert code == 3 and "FAILED" in stdout  # ...unless the format is required: the environment's failure (3)


def test_a_failed_gate_exits_1(capsys, exported, tmp_path):
    _, out = exported
    policy = tmp_path / "strict.toml"
    policy.write_text("[fp32]\nmax_abs_error = 1e-9\n")
    code, stdout, _ = _run(capsys, "validate", "--artifacts", str(out / "edgeship_demo_fp32.onnx"), "--policy",
                           str(policy), "--iterations", "2")
    assert code == 1 and "max_abs_error" in stdout


def test_corrupt_artifact_fails_and_the_others_still_run(exported, tmp_path):
    loaded, out = exported
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes((out / "edgeship_demo_fp32.tflite").read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    report = validate([bad, garbage, out / "edgeship_demo_fp32.onnx"], reference=loaded, iterations=2, warmup=1,
                      progress=False)
    statuses = [a.status for a in report.artifacts]
    assert statuses == [Status.FAILED, Status.FAILED, Status.PASSED]
    assert "truncated.tflite" in report.artifacts[0].reason and "garbage.onnx" in report.artifacts[1].reason
    assert report.exit_code == 1


def test_artifact_whose_input_does_not_fit_the_data_fails(exported, tmp_path):
    loaded, _ = exported
    from edgeship.models.loading import DEMO_LABELS
    from edgeship.models.registry import get_variant

    model = get_variant("mobilenet_v2_0.35_128").build(classes=10)  # same classes, 128x128 input
    other = export(model=model, labels=DEMO_LABELS, formats=["onnx"], out=tmp_path, progress=False)
    report = validate([other.paths[0]], reference=loaded, iterations=2, warmup=1, progress=False)
    (a,) = report.artifacts
    assert a.status is Status.FAILED and "shape" in a.reason


def _one_line(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line_exit_2(capsys, exported, tmp_path):
    _, out = exported
    art = str(out / "edgeship_demo_fp32.tflite")
    (tmp_path / "empty").mkdir()
    _one_line(*_run(capsys, "validate", "--artifacts", art, "--data", str(tmp_path / "empty"))[::2], "no images")
    np.savez(tmp_path / "labels.npz", images=np.zeros((4, 96, 96, 3), np.uint8), labels=np.array([0, 1, 2, 12]))
    _one_line(*_run(capsys, "validate", "--artifacts", art, "--data", str(tmp_path / "labels.npz"))[::2],
              "10 classes")
    np.save(tmp_path / "gray.npy", np.zeros((4, 96, 96, 1), np.uint8))
    _one_line(*_run(capsys, "validate", "--artifacts", art, "--data", str(tmp_path / "gray.npy"))[::2], "RGB")
    _one_line(*_run(capsys, "validate", "--artifacts", art, "--reference", str(tmp_path / "gone.keras"))[::2],
              "not found")
    _one_line(*_run(capsys, "validate", "--artifacts", str(tmp_path / "x.pdf"))[::2], "not an artifact")
    (tmp_path / "bad.toml").write_text("[fp32]\nagreement = 1\n")
    _one_line(*_run(capsys, "validate", "--artifacts", art, "--policy", str(tmp_path / "bad.toml"))[::2],
              "unknown keys ['agreement']")


def test_run_without_arguments_runs_the_demo(capsys, tmp_path, monkeypatch):
    """``edgeship run --out DIR`` without a config hands ``edgeship.pipeline.run`` the default RunConfig (the embedded
    demo, every format) with that output directory, prints its lines and exits with the report's code. The run of
    that RunConfig itself (export, quantise, validate: 7 rows, all passed, the four reports) is asserted on the one
    scripts/bench.py --quick makes in a fresh process (tests/test_bench.py), so the suite pays for the whole demo
    pipeline once, not twice."""
    import edgeship.pipeline as pipeline

    seen = []

    def run(config, echo):
        seen.append(config)
        echo("PASSED in 1.0 s")
        return type("Report", (), {"exit_code": len(seen) - 1})()

    monkeypatch.setattr(pipeline, "run", run)
    code, stdout, err = _run(capsys, "run", "--out", str(tmp_path / "o"))
    assert code == 0 and "PASSED" in stdout, err
    assert seen[0] == pipeline.RunConfig(out=tmp_path / "o") and seen[0].model is None  # the demo, the defaults
    assert _run(capsys, "run", "--out", str(tmp_path / "o"))[0] == 1  # the report's exit code, as it is


def test_run_config(capsys, tmp_path):
    (tmp_path / "edgeship.toml").write_text(
        '[export]\nformats = ["onnx"]\n[quantize]\nptq = "fast"\n[validate]\niterations = 3\nkernel_path_samples = 0\n'
        '[output]\ndir = "build"\n')
    code, stdout, err = _run(capsys, "run", str(tmp_path / "edgeship.toml"))
    assert code == 0, err
    assert (tmp_path / "build" / "edgeship_demo_fp32.onnx").exists()
    assert (tmp_path / "build" / "edgeship_demo_int8.onnx").exists()  # the exported formats are quantised too
    assert not (tmp_path / "build" / "edgeship_demo_int8.tflite").exists()
    (tmp_path / "bad.toml").write_text("[exprot]\n")
    _one_line(*_run(capsys, "run", str(tmp_path / "bad.toml"))[::2], "unknown table")


def test_run_config_with_quantize(capsys, tmp_path):
    """The whole pipeline: export, quantise, validate, with the shipped gates."""
    (tmp_path / "edgeship.toml").write_text(
        '[export]\nformats = ["tflite"]\n[quantize]\nformats = ["tflite"]\nnum_samples = 32\nptq = "fast"\n'
        '[validate]\niterations = 3\n[output]\ndir = "build"\n')
    code, stdout, err = _run(capsys, "run", str(tmp_path / "edgeship.toml"))
    assert code == 0, stdout + err
    assert "quantised 1 artifact in" in stdout
    data = json.loads((tmp_path / "build" / "report" / "report.json").read_text())
    assert {(a["format"], a["precision"], a["status"]) for a in data["artifacts"]} == {
        ("tflite", "fp32", "passed"), ("tflite", "int8", "passed")}
    int8 = next(a for a in data["artifacts"] if a["precision"] == "int8")
    assert int8["layer_sqnr"] and int8["metrics"]["top1_agreement"] >= 0.99


def test_a_required_format_that_is_absent_fails(exported):
    loaded, out = exported
    report = validate([out / "edgeship_demo_fp32.onnx"], reference=loaded, require=["tflite"], iterations=2,
                      warmup=1, progress=False)
    assert not report.passed and report.exit_code == 1
    assert report.artifacts[-1].status is Status.FAILED and "--require tflite" in report.artifacts[-1].reason


def test_run_config_quantize_keys(tmp_path):
    """[quantize] precisions and onnx_method reach the quantise stage; an unknown key is refused by name."""
    from edgeship.errors import UserError
    from edgeship.pipeline import load_config

    (tmp_path / "edgeship.toml").write_text('[quantize]\nprecisions = ["w8"]\nonnx_method = "entropy"\n'
                                            'weight_rounding = "adaptive"\nint8_bias_correction = true\n'
                                            'raw_input_compensation = true\n')
    cfg = load_config(tmp_path / "edgeship.toml")
    assert cfg.quantize_precisions == ["w8"] and cfg.onnx_method == "entropy" and cfg.weight_rounding == "adaptive"
    assert cfg.int8_bias_correction and cfg.raw_input_compensation
    default = load_config(None)  # the ptq preset decides the three options it covers
    assert (default.ptq, default.weight_rounding, default.int8_bias_correction) == ("thorough", None, None)
    assert not default.raw_input_compensation
    assert load_config(None).quantize_precisions is None and load_config(None).onnx_method == "tflite"
    (tmp_path / "bad.toml").write_text('[quantize]\nprecision = ["w8"]\n')
    with pytest.raises(UserError, match=r"unknown keys \['precision'\]"):
        load_config(tmp_path / "bad.toml")
