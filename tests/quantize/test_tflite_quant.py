"""Full-integer TFLite quantisation of the demo MobileNetV2: ReLU6 outputs get the fixed [0, 6] range, the rest is
calibrated, weights are per-channel, and the int8 model still answers like the Keras model.

Calibrating converts the model (~10 s), so the module calibrates once and quantises every variant from that;
one test checks the one-call ``quantize_tflite`` gives the same model."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.tools import flatbuffer_utils

from edgeship.models.loading import DEMO_DIR

SIX_OVER_255 = np.float32(6.0 / 255.0)
N_CALIBRATION = 32


@pytest.fixture(scope="module")
def demo(demo_calibrated):
    """The demo and N_CALIBRATION calibration images, preprocessed: a seeded random pick (every class, not one
    folder), the session's one calibration set (``demo_calibrated`` in tests/conftest.py)."""
    loaded, cal, _ = demo_calibrated
    assert len(cal.inputs) == N_CALIBRATION
    return loaded, cal.inputs


@pytest.fixture(scope="module")
def calibrated(demo_calibrated) -> bytes:
    """``calibrate(loaded, calibration)`` of ``demo``: the session's (a conversion, the slow step)."""
    return demo_calibrated[2]


@pytest.fixture(scope="module")
def quantised(calibrated):
    """Every variant from the one calibration (quantising is ~0.1 s; calibrating converts the model, ~10 s)."""
    from edgeship.quantize.formats.tflite import quantize_calibrated

    made = {}

    def get(io_dtype: str = "uint8", relu6_fixed: bool = True):
        key = (io_dtype, relu6_fixed)
        if key not in made:
            made[key] = quantize_calibrated(calibrated, io_dtype=io_dtype, relu6_fixed=relu6_fixed)
        return made[key]

    return get


def _graph(model: bytes):
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    return m, m.subgraphs[0]


def _ops(m, sg):
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        yield max(code.builtinCode, code.deprecatedBuiltinCode), op


def _relu6_outputs(model: bytes) -> dict[str, object]:
    """Found in the quantised graph itself, not taken from the result's lists."""
    m, sg = _graph(model)
    out = {}
    for code, op in _ops(m, sg):
        if code == tfl.BuiltinOperator.RELU6 or getattr(op.builtinOptions, "fusedActivationFunction", None) == \
                tfl.ActivationFunctionType.RELU6:
            for i in op.outputs:
                out[sg.tensors[i].name.decode()] = sg.tensors[i].quantization
    return out


def _name(t) -> str:
    return t.name.decode()


def test_relu6_outputs_get_scale_6_over_255_and_zero_point_minus_128(quantised):
    r = quantised()
    relu6 = _relu6_outputs(r.model)
    assert len(relu6) == 35  # MobileNetV2: Conv1, 17 depthwise, 16 expand (block 0 has none), Conv_1
    for name, q in relu6.items():
        assert np.float32(q.scale[0]) == pytest.approx(SIX_OVER_255, rel=1e-6), name
        assert list(q.zeroPoint) == [-128], name
        assert r.tensor_params[name]["range_source"] == "fixed"
    assert sorted(r.fixed_tensors) == sorted(relu6)


def test_calibrated_relu6_ranges_come_from_the_data(quantised):
    r = quantised(relu6_fixed=False)
    relu6 = _relu6_outputs(r.model)
    assert r.fixed_tensors == []
    scales = np.array([q.scale[0] for q in relu6.values()], np.float32)
    assert set(relu6) <= set(r.calibrated_tensors)
    assert np.all(scales <= SIX_OVER_255 * (1 + 1e-6))
    assert np.sum(scales < SIX_OVER_255 * 0.99) >= 3  # several ReLU6s never reach 6 on 32 images
    assert all(list(q.zeroPoint) == [-128] for q in relu6.values())  # min is still 0


@pytest.mark.parametrize("relu6_fixed", [True, False])
def test_fixed_and_calibrated_partition_the_activations(quantised, relu6_fixed):
    r = quantised(relu6_fixed=relu6_fixed)
    m, sg = _graph(r.model)
    produced = {int(i) for _, op in _ops(m, sg) for i in op.outputs} | {int(i) for i in sg.inputs}
    activations = {_name(sg.tensors[i]) for i in produced
                   if sg.tensors[i].type in (tfl.TensorType.INT8, tfl.TensorType.UINT8)}
    fixed, calibrated = set(r.fixed_tensors), set(r.calibrated_tensors)
    assert len(fixed) == len(r.fixed_tensors) and len(calibrated) == len(r.calibrated_tensors)
    assert not fixed & calibrated
    assert fixed | calibrated == activations
    for name in activations:
        assert r.tensor_params[name]["range_source"] == ("fixed" if name in fixed else "calibrated")


@pytest.mark.parametrize("io_dtype, tensor_type", [("uint8", tfl.TensorType.UINT8), ("int8", tfl.TensorType.INT8),
                                                   ("float32", tfl.TensorType.FLOAT32)])
def test_io_dtype_is_what_was_asked_and_the_body_is_int8(quantised, io_dtype, tensor_type):
    r = quantised(io_dtype=io_dtype)
    m, sg = _graph(r.model)
    assert [sg.tensors[i].type for i in sg.inputs] == [tensor_type]
    assert [sg.tensors[i].type for i in sg.outputs] == [tensor_type]
    for code, op in _ops(m, sg):
        if code in (tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOperator.DEPTHWISE_CONV_2D,
                    tfl.BuiltinOperator.FULLY_CONNECTED, tfl.BuiltinOperator.ADD):
            assert sg.tensors[op.outputs[0]].type == tfl.TensorType.INT8


def test_weights_are_per_channel(quantised):
    r = quantised()
    m, sg = _graph(r.model)
    checked = 0
    for code, op in _ops(m, sg):
        if code not in (tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOperator.DEPTHWISE_CONV_2D):
            continue
        w = sg.tensors[op.inputs[1]]
        dim = 3 if code == tfl.BuiltinOperator.DEPTHWISE_CONV_2D else 0  # OHWI vs 1HWO
        assert w.type == tfl.TensorType.INT8 and w.quantization.quantizedDimension == dim
        assert len(w.quantization.scale) == w.shape[dim] > 1
        assert r.tensor_params[_name(w)]["channels"] == w.shape[dim]
        assert r.tensor_params[_name(w)]["range_source"] == "weights"
        checked += 1
    assert checked == 52


def test_int8_model_agrees_with_keras_on_the_heldout_set(demo, quantised):
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.data import load_image_folder

    loaded, _ = demo
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=loaded.spec.labels)
    x = loaded.spec.preprocessing.apply(held.images)
    keras_top = np.argmax(loaded.keras_model.predict(x, verbose=0), -1)

    it = Interpreter(model_content=quantised().model)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = d["quantization"]
    assert d["dtype"] == np.uint8
    it.set_tensor(d["index"], np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8))
    it.invoke()
    top = np.argmax(it.get_tensor(o["index"]), -1)
    assert np.mean(top == keras_top) >= 0.99
    assert np.mean(top == held.labels) >= np.mean(keras_top == held.labels) - 0.005


def test_quantize_tflite_is_calibrate_then_quantize_and_deterministic(demo, quantised):
    from edgeship.quantize.formats.tflite import quantize_tflite

    loaded, calibration = demo
    r = quantize_tflite(loaded, calibration)  # defaults: uint8 I/O, fixed ReLU6
    assert r.model == quantised().model
    assert r.tensor_params == quantised().tensor_params


def test_unknown_io_dtype_is_a_user_error(demo):
    from edgeship.errors import UserError
    from edgeship.quantize.formats.tflite import quantize_tflite

    loaded, calibration = demo
    with pytest.raises(UserError, match="io dtype"):
        quantize_tflite(loaded, calibration, io_dtype="int16")
    with pytest.raises(UserError, match="calibration data"):
        quantize_tflite(loaded, calibration[:, :32])


def test_degenerate_ranges_are_widened_so_litert_opens_the_file():
    """A random-init classifier barely varies its logits; with fixed ReLU6 ranges upstream, the unwidened file
    was refused by XNNPACK ("TfLiteXNNPackDelegate failed to prepare", found by the benchmark)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.models.loading import load_model as _load
    from edgeship.quantize.formats.tflite import quantize_tflite

    loaded = _load("mobilenet_v2_0.35_96")
    images = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), dtype=np.uint8)
    result = quantize_tflite(loaded, loaded.spec.preprocessing.apply(images), relu6_fixed=True,
                             input_range=loaded.spec.preprocessing.value_range)
    interp = Interpreter(model_content=result.model)
    interp.allocate_tensors()  # raised RuntimeError before the widening
    scale, _ = interp.get_output_details()[0]["quantization"]
    assert scale >= 1e-3 / 256


# -- float fallback (--keep-float) -----------------------------------------------------------------------------
def _float_ops(model: bytes) -> set[str]:
    """Output tensor names of the compute ops that run in float in a quantised model."""
    m, g = _graph(model)
    skip = {tfl.BuiltinOperator.QUANTIZE, tfl.BuiltinOperator.DEQUANTIZE}
    out = set()
    for op in g.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in skip:
            continue
        t = g.tensors[op.outputs[0]]
        if t.type == tfl.TensorType.FLOAT32:
            out.add(t.name.decode() if isinstance(t.name, bytes) else t.name)
    return out


@pytest.fixture(scope="module")
def heldout_inputs(demo):
    from edgeship.data import load_image_folder

    loaded, _ = demo
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=loaded.spec.labels)
    return loaded.spec.preprocessing.apply(held.images)


def test_keep_float_count_keeps_exactly_the_worst_layers(calibrated, quantised, demo):
    """The accumulated ranking (worst per-layer SQNR first; the own-contribution one: test_fallback.py)."""
    from edgeship.quantize.techniques.fallback import keep_float
    from edgeship.quantize.layers import LayerNames, tensor_sqnr

    loaded, calibration = demo
    first = quantised()
    assert not _float_ops(first.model)  # full-integer to begin with
    sqnr = tensor_sqnr(calibrated, first.model, calibration, max_samples=8)
    fb = keep_float(calibrated, first, calibration[:16], sqnr, 3, rank="accumulated", io_dtype="uint8",
                    relu6_fixed=True)
    worst3 = [n for n, _ in sorted(sqnr.items(), key=lambda kv: kv[1]) if LayerNames().path(n)][:3]
    assert fb.result.kept_float == worst3 and len(fb.kept) == 3 and fb.target is None and fb.met
    assert _float_ops(fb.result.model) == set(worst3)  # those ops, and only those, now compute in float
    # the file's edges stay 8-bit: clients feed it like the all-int8 one
    _, g = _graph(fb.result.model)
    assert g.tensors[g.inputs[0]].type == tfl.TensorType.UINT8 and g.tensors[g.outputs[0]].type == tfl.TensorType.UINT8


def test_keep_float_auto_stops_at_the_target(calibrated, quantised, demo, heldout_inputs):
    """On the 360 held-out images the all-int8 demo disagrees with float on a few; asking for no disagreement at
    all makes "auto" keep layers one by one, and it reports what it reached either way."""
    from edgeship.quantize.techniques.fallback import AUTO_LIMIT, keep_float, predict
    from edgeship.quantize.layers import tensor_sqnr
    from edgeship.numerics import top1_agreement

    loaded, calibration = demo
    first = quantised()
    sqnr = tensor_sqnr(calibrated, first.model, calibration, max_samples=8)
    fb = keep_float(calibrated, first, heldout_inputs, sqnr, "auto", max_drop=0.0, rank="accumulated",
                    io_dtype="uint8", relu6_fixed=True)
    assert fb.agreement_before < 1.0 and fb.target == 1.0
    assert 1 <= len(fb.kept) <= AUTO_LIMIT
    assert fb.met == (fb.agreement >= 1.0)
    # the reported agreement is the shipped model's
    again = top1_agreement(predict(calibrated, heldout_inputs), predict(fb.result.model, heldout_inputs))
    assert again == pytest.approx(fb.agreement)
    # a target already met keeps nothing
    easy = keep_float(calibrated, first, heldout_inputs, sqnr, "auto", max_drop=0.05, rank="accumulated",
                      io_dtype="uint8", relu6_fixed=True)
    assert easy.kept == [] and easy.result is first and easy.met


@pytest.mark.parametrize("value", ["some", "-1", "1.5"])
def test_keep_float_rejects_bad_values(value):
    from edgeship.errors import UserError
    from edgeship.quantize.techniques.fallback import parse_keep_float

    with pytest.raises(UserError, match="--keep-float must be 'auto' or a number of layers"):
        parse_keep_float(value)
