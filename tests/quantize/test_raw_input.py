"""The raw-input compensation (edgeship.quantize.techniques.raw_input): with MobileNet's mean 127.5 a uint8 input's zero point
(127) puts every raw pixel half a step high; taking that out of the first layer's bias must remove the mean error of
that layer's output under raw-pixel feeding (what MediaPipe feeds)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeship.quantize.techniques.raw_input import compensate_raw_input
from edgeship.quantize.formats.tflite import quantize_calibrated


def _first_layer_bias_error(calibrated: bytes, int8: bytes, tensor: str, images: np.ndarray, pre) -> np.ndarray:
    """Per-channel mean signed error (int8 dequantised minus float) of ``tensor`` over the images' interior
    positions (the last row and column, which overlap the stem's zero padding, left out), the int8 model fed raw
    pixels."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fi = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
        qi = Interpreter(model_content=int8, experimental_preserve_all_tensors=True)
    fi.allocate_tensors()
    qi.allocate_tensors()
    fd = next(d for d in fi.get_tensor_details() if d["name"] == tensor)
    qd = next(d for d in qi.get_tensor_details() if d["name"] == tensor)
    scale, zp = qd["quantization"]
    errs = []
    for im in images:
        fi.set_tensor(fi.get_input_details()[0]["index"], pre.apply(im[None]))
        qi.set_tensor(qi.get_input_details()[0]["index"], im[None])  # raw pixels, as MediaPipe feeds them
        fi.invoke()
        qi.invoke()
        ref = fi.get_tensor(fd["index"])[0, :-1, :-1].astype(np.float64)
        deq = (qi.get_tensor(qd["index"])[0, :-1, :-1].astype(np.float64) - zp) * scale
        errs.append((deq - ref).reshape(-1, ref.shape[-1]))
    return np.concatenate(errs).mean(axis=0)


def test_compensation_removes_the_first_layers_mean_error_under_raw_pixels(demo):
    loaded, _, calibrated, heldout = demo
    pre = loaded.spec.preprocessing
    plain = quantize_calibrated(calibrated, input_range=pre.value_range).model
    fixed, record = compensate_raw_input(plain, pre.value_range)
    assert record["applied"] and record["zero_point"] == 127 and record["offset_steps"] == pytest.approx(0.5, abs=1e-4)
    (first,) = record["layers"]
    images = heldout[::12]
    before = _first_layer_bias_error(calibrated, plain, first, images, pre)
    after = _first_layer_bias_error(calibrated, fixed, first, images, pre)
    # measured (32 calibration images, 30 held-out): mean |per-channel error| 0.00472 -> 0.00205 (the rest is the
    # layer's own int8 rounding and the ReLU6 clamp)
    assert np.abs(after).mean() < 0.5 * np.abs(before).mean()


def test_compensation_only_for_a_uint8_input(demo):
    loaded, _, calibrated, _ = demo
    rng = loaded.spec.preprocessing.value_range
    int8_io = quantize_calibrated(calibrated, io_dtype="int8", input_range=rng).model
    same, record = compensate_raw_input(int8_io, rng)
    assert same == int8_io and not record["applied"] and "not uint8" in record["reason"]
