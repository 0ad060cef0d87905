"""Export never writes a broken model (issue 29, item 4): the TFLite conversion's primary path freezes the
variables and gives the from_keras_model fallback's model; every float file is checked before it is recorded; a full or read-only TMPDIR
during conversion is exit 3 with one line, never a fallback."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from edgeship.cli import main
from edgeship.types import Format, Precision

VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


def _ops(flatbuffer: bytes) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    return {op["op_name"] for op in interpreter._get_ops_details()}


def _outputs(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for image in x:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def _fail_path(monkeypatch, exc: BaseException, path: str = "from_concrete_functions") -> None:
    """Make one conversion path raise ``exc``: the primary (the frozen concrete function) by default, or the
    fallback ``from_keras_model`` (the SavedModel round trip)."""
    from edgeship._tf import tf

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(tf().lite.TFLiteConverter, path, fail)


@pytest.fixture(scope="module")
def demo():
    from edgeship.models.loading import load_model

    return load_model()


def test_primary_is_frozen_and_the_fallback_gives_the_same_model(demo, demo_heldout, monkeypatch):
    from edgeship.export.tflite import convert

    with monkeypatch.context() as m:
        _fail_path(m, AssertionError("the fallback ran"), "from_keras_model")
        primary = convert(demo, Precision.FP32)
    with monkeypatch.context() as m:
        _fail_path(m, ValueError("forced: the concrete-function path fails on this model"))
        fallback = convert(demo, Precision.FP32)
    assert not _ops(primary) & VARIABLE_OPS, _ops(primary)
    images, _, _ = demo_heldout
    x = demo.spec.preprocessing.apply(images)
    want, got = _outputs(primary, x), _outputs(fallback, x)
    assert np.isfinite(got).all()
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_environment_failure_in_conversion_is_exit_3_one_line_and_no_fallback(tmp_path, monkeypatch, capsys, err):
    import os

    from edgeship._tf import tf

    _fail_path(monkeypatch, OSError(err, os.strerror(err), "/tmp/tmpabc/model.mlir"))

    def no_fallback(*args, **kwargs):
        raise AssertionError("the fallback ran after an environment failure")

    monkeypatch.setattr(tf().lite.TFLiteConverter, "from_keras_model", no_fallback)
    out = tmp_path / "out"
    assert main(["export", "--formats", "tflite", "--out", str(out)]) == 3
    err_text = capsys.readouterr().err.strip().splitlines()
    assert len(err_text) == 1 and "TMPDIR" in err_text[0], err_text
    assert not any(p.suffix == ".tflite" for p in out.rglob("*"))


def test_converter_wrapped_no_space_message_is_exit_3(tmp_path, monkeypatch, capsys):
    # The converter wraps the OSError in its own exception: the text is what is left of it (on both paths).
    for path in ("from_concrete_functions", "from_keras_model"):
        _fail_path(monkeypatch, RuntimeError("ConverterError: write failed: No space left on device"), path)
    assert main(["export", "--formats", "tflite", "--out", str(tmp_path / "out")]) == 3
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _unfrozen_fallback(loaded, precision, configure=None):
    """What the fallback wrote before issue 29: the concrete function converted with its variables unfrozen."""
    from edgeship._tf import silenced, tf

    t = tf()
    model = loaded.keras_model
    h, w, c = loaded.spec.input_shape
    fn = t.function(lambda image: model(image, training=False),
                    input_signature=[t.TensorSpec((1, h, w, c), t.float32, name="image")])
    with silenced():
        return t.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model).convert()


@pytest.mark.parametrize("plant", ["nan_outputs", "truncated"])
def test_broken_float_file_is_refused_and_not_recorded(tmp_path, monkeypatch, capsys, plant):
    import edgeship.export.tflite as tflite_export

    if plant == "nan_outputs":
        monkeypatch.setattr(tflite_export, "convert", _unfrozen_fallback)
    else:
        real = tflite_export.export_tflite
        monkeypatch.setattr(tflite_export, "export_tflite", lambda *a, **k: real(*a, **k)[:20_000])
    out = tmp_path / "out"
    code = main(["export", "--formats", "onnx,tflite", "--out", str(out)])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("edgeship: error: edgeship_demo_fp32.tflite: ") or "edgeship_demo_fp32.tflite: " in line
    assert ("not finite" in line) if plant == "nan_outputs" else ("cannot open or run" in line), line
    assert sorted(p.name for p in out.iterdir()) == ["edgeship_demo_fp32.onnx", "manifest.json"]  # no temporary
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["edgeship_demo_fp32.onnx"]


def test_check_passes_good_files_and_names_their_gate(demo_export, demo):
    from edgeship.export import check

    result = demo_export(formats=list(Format), precisions=["fp32", "fp16"])
    reference = check.reference_outputs(demo)
    assert reference.shape == (check.CHECK_IMAGES, demo.spec.num_classes)
    for record in result.manifest.artifacts:
        assert check.problem(Format(record.format), Precision(record.precision), result.out_dir / record.path, demo,
                             reference) is None, record.path
    assert check.float_gate(Format.TFLITE, Precision.FP32, demo.spec.output_kind) == {
        "max_abs_error": 1e-4, "top1_agreement": 1.0}


def test_check_refuses_another_models_file(demo_export, demo):
    """A file that runs and answers finite numbers, but not the Keras model's: refused on the gate."""
    from edgeship.export import check

    result = demo_export(formats=["tflite"], precisions=["fp32"])
    path = result.out_dir / result.manifest.artifacts[0].path
    wrong = check.reference_outputs(demo)[::-1].copy()  # the answers of other images
    what = check.problem(Format.TFLITE, Precision.FP32, path, demo, wrong)
    assert what is not None and "differ from the Keras model's" in what
