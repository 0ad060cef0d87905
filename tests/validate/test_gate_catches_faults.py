"""The gate must catch real faults, not just pass clean files: each seeded fault fails with exit status 1 and a
reason naming what drifted, and clean artifacts pass over many data seeds (no false alarms)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeship.data import load_image_folder
from edgeship.export.common import ModelInfo
from edgeship.metadata.tflite import add_metadata
from edgeship.models.loading import DEMO_DIR, load_model
from edgeship.models.spec import Preprocessing
from edgeship.validate.pipeline import validate
from edgeship.validate.results import Status

FAST = dict(iterations=3, warmup=1, progress=False)


@pytest.fixture(scope="module")
def clean(demo_export):
    """The demo's fp32 TFLite and ONNX (the session's one export, conftest.py)."""
    loaded = load_model()
    result = demo_export(formats=["tflite", "onnx"])
    out = result.out_dir
    paths = {a.format.value: out / a.path for a in result.manifest.artifacts}
    return loaded, out, paths


def _only(report):
    (a,) = report.artifacts
    return a


def _tflite_model(path):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))


def _save_tflite(model, path):
    from ai_edge_litert.tools import flatbuffer_utils

    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _conv_weights(model, which):
    """(tensor, buffer) of the ``which``-th CONV_2D's weight tensor."""
    from ai_edge_litert import schema_py_generated as schema

    g = model.subgraphs[0]
    convs = [op for op in g.operators
             if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D]
    t = g.tensors[convs[which].inputs[1]]
    return t, model.buffers[t.buffer]


def _edit_onnx(src, dst, edit):
    import onnx

    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))


def _set_prop(model, key, value):
    for p in model.metadata_props:
        if p.key == key:
            p.value = value


def test_clean_artifacts_pass(clean):
    loaded, out, _ = clean
    report = validate([out], reference=loaded, **FAST)
    assert report.passed and report.exit_code == 0
    assert [a.status for a in report.artifacts] == [Status.PASSED, Status.PASSED]


def test_clean_artifacts_pass_over_many_seeds(clean, tmp_path):
    """Random subsets of held-out and calibration images, ten seeds: no false alarm."""
    loaded, out, _ = clean
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), loaded.spec.labels)
    cal = load_image_folder(DEMO_DIR / "calibration", (96, 96), loaded.spec.labels)
    images = np.concatenate([held.images, cal.images])
    labels = np.concatenate([held.labels, cal.labels])
    for seed in range(10):
        pick = np.random.default_rng(seed).choice(len(images), 96, replace=False)
        data = tmp_path / f"seed{seed}.npz"
        np.savez(data, images=images[pick], labels=labels[pick])
        report = validate([out], reference=loaded, data=data, **FAST)
        assert report.passed, [(a.path, a.reason) for a in report.artifacts]


def test_tflite_channel_order_swapped_fails(clean, tmp_path):
    """A file whose first convolution expects BGR while its metadata says RGB."""
    loaded, _, paths = clean
    model = _tflite_model(paths["tflite"])
    tensor, buf = _conv_weights(model, 0)
    w = np.frombuffer(bytes(buf.data), np.float32).reshape(tensor.shape)  # (out, kh, kw, in)
    buf.data = np.ascontiguousarray(w[..., ::-1]).tobytes()
    bad = tmp_path / "bgr.tflite"
    _save_tflite(model, bad)
    a = _only(validate([bad], reference=loaded, **FAST))
    assert a.status is Status.FAILED and "max_abs_error" in a.reason


def test_onnx_channel_order_swapped_fails(clean, tmp_path):
    loaded, _, paths = clean
    bad = tmp_path / "bgr.onnx"
    pre = dict(loaded.spec.preprocessing.to_dict(), color="bgr")
    _edit_onnx(paths["onnx"], bad, lambda m: _set_prop(m, "preprocessing", json.dumps(pre)))
    report = validate([bad], reference=loaded, **FAST)
    a = _only(report)
    assert a.status is Status.FAILED and "max_abs_error" in a.reason and report.exit_code == 1


def test_wrong_normalisation_fails(clean, tmp_path):
    loaded, _, paths = clean
    wrong = loaded.spec.replace(preprocessing=Preprocessing(mean=(0, 0, 0), std=(255, 255, 255)))
    bad = tmp_path / "norm.tflite"
    bad.write_bytes(add_metadata(paths["tflite"].read_bytes(), wrong, ModelInfo("demo")))
    a = _only(validate([bad], reference=loaded, **FAST))
    assert a.status is Status.FAILED and "top1_agreement" in a.reason


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_labels_in_the_wrong_order_fail(clean, tmp_path, fmt):
    loaded, _, paths = clean
    shuffled = tuple(reversed(loaded.spec.labels))
    bad = tmp_path / f"labels.{fmt}"
    if fmt == "tflite":
        bad.write_bytes(add_metadata(paths["tflite"].read_bytes(), loaded.spec.replace(labels=shuffled),
                                     ModelInfo("demo")))
    else:
        _edit_onnx(paths["onnx"], bad, lambda m: _set_prop(m, "labels", json.dumps(list(shuffled))))
    a = _only(validate([bad], reference=loaded, **FAST))
    assert a.status is Status.FAILED and "top1_agreement" in a.reason
    assert a.metrics.top1_agreement < 0.5


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_one_corrupted_layer_fails(clean, tmp_path, fmt):
    loaded, _, paths = clean
    rng = np.random.default_rng(0)
    bad = tmp_path / f"corrupt.{fmt}"
    if fmt == "tflite":
        model = _tflite_model(paths["tflite"])
        tensor, buf = _conv_weights(model, 5)
        w = np.frombuffer(bytes(buf.data), np.float32)
        buf.data = (w + rng.normal(scale=w.std(), size=w.shape).astype(np.float32)).tobytes()
        _save_tflite(model, bad)
    else:
        from onnx import numpy_helper

        def corrupt(m):
            convs = [n for n in m.graph.node if n.op_type == "Conv"]
            name = convs[5].input[1]
            init = next(i for i in m.graph.initializer if i.name == name)
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + rng.normal(scale=w.std(), size=w.shape)).astype(w.dtype), name))

        _edit_onnx(paths["onnx"], bad, corrupt)
    a = _only(validate([bad], reference=loaded, **FAST))
    assert a.status is Status.FAILED and "max_abs_error" in a.reason


@pytest.fixture(scope="module")
def int8_tflite(clean, tmp_path_factory):
    """A full-integer TFLite (uint8 input) made with the TFLite converter's own calibration."""
    from edgeship._tf import tf
    from edgeship.export.tflite import convert

    loaded, _, _ = clean
    cal = load_image_folder(DEMO_DIR / "calibration", (96, 96), loaded.spec.labels)
    x = loaded.spec.preprocessing.apply(cal.images[::2])
    t = tf()

    def int8(c):
        c.optimizations = [t.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([x[i : i + 1]] for i in range(len(x)))
        c.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = t.uint8
        c.inference_output_type = t.uint8

    from edgeship.types import Precision

    data = add_metadata(convert(loaded, Precision.FP32, configure=int8), loaded.spec, ModelInfo("demo"))
    path = tmp_path_factory.mktemp("int8") / "demo_int8.tflite"
    path.write_bytes(data)
    return path


def test_clean_int8_passes_its_gates(clean, int8_tflite, tmp_path):
    """The converter's own int8 passes when fed re-quantised floats (float data); its input range is the one the
    calibration images spanned, not the normalisation's, so raw pixels (what MediaPipe feeds a uint8 input, and
    what the validator feeds for image data) mean something else to it, and the SQNR gate catches that."""
    loaded, _, _ = clean
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), loaded.spec.labels)
    floats = tmp_path / "heldout_f32.npz"
    np.savez(floats, images=held.images.astype(np.float32), labels=held.labels)
    a = _only(validate([int8_tflite], reference=loaded, data=floats, **FAST))
    assert a.precision == "int8" and a.input_feed == "re-quantised floats"
    assert a.status is Status.PASSED, a.reason
    assert {g.name for g in a.gates} == {"top1_agreement", "sqnr_db", "accuracy_top1_drop", "confident_flips",
                                         "kernel_path_sqnr_db"}  # the second kernel path: reference kernels
    raw = _only(validate([int8_tflite], reference=loaded, **dict(FAST, kernel_path_samples=0)))
    assert raw.input_feed == "raw uint8 pixels (as MediaPipe)"
    assert raw.status is Status.FAILED and "sqnr_db" in raw.reason  # measured: 17.8 dB


def test_wrong_int8_input_scale_fails(clean, int8_tflite, tmp_path):
    loaded, _, _ = clean
    model = _tflite_model(int8_tflite)
    g = model.subgraphs[0]
    q = g.tensors[g.inputs[0]].quantization
    # An input range half the data's (as when calibration saw [0, 1] inputs and clients send [-1, 1]): half the
    # pixels saturate. (A larger scale only costs precision: within the gates, measured at 1.5x.)
    q.scale = [float(q.scale[0]) * 0.5]
    bad = tmp_path / "scale.tflite"
    _save_tflite(model, bad)
    a = _only(validate([bad], reference=loaded, **FAST))
    assert a.status is Status.FAILED and ("sqnr_db" in a.reason or "top1_agreement" in a.reason)
