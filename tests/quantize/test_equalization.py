"""Cross-layer equalisation (edgeship.quantize.techniques.equalization) on the trained demo model: it finds MobileNet's 17
depthwise -> pointwise pairs, narrows the range imbalance between each depthwise output channel (its
BatchNormalization folded) and the pointwise input channel it feeds, keeps the float model's outputs (ReLU6 bounds:
exact on the calibration images, > 40 dB on held-out ones), the trained weights come back exactly, and the stage
records it in the int8-weight files."""

from __future__ import annotations

import json

import numpy as np

from edgeship.quantize.techniques.equalization import _bn_gain, equalized, find_pairs, plan_equalization, plan_scales


def _sqnr(out, ref):
    ref = ref.astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / np.sum((out.astype(np.float64) - ref) ** 2))


def _imbalance(pairs):
    """Mean over the pairs' channels of |log10(r1 / r2)|: r1 the depthwise output channel's range (its
    BatchNormalization folded), r2 the pointwise input channel's range: what CLE equalises (Nagel et al. sec. 4.1)."""
    out = []
    for p in pairs:
        r1 = np.abs(p.first.get_weights()[0][..., 0] * _bn_gain(p.bn)[0]).max(axis=(0, 1))
        r2 = np.abs(p.second.get_weights()[0]).max(axis=(0, 1, 3))
        out.append(np.abs(np.log10(r1 / r2)))
    return float(np.concatenate(out).mean())


def test_equalisation_keeps_the_float_model_and_narrows_the_ranges(demo, demo_heldout_x):
    loaded, cal, _, _ = demo
    model = loaded.keras_model
    before = [w.copy() for w in model.get_weights()]
    ref, ref_cal = model.predict(demo_heldout_x, verbose=0), model.predict(cal.inputs, verbose=0)
    pairs = find_pairs(model)
    assert len(pairs) == 17 and all(p.kind == "dw-pw" for p in pairs)
    imbalance = _imbalance(pairs)
    plan = plan_equalization(loaded, cal.inputs)
    with equalized(loaded, plan) as record:
        out, out_cal = model.predict(demo_heldout_x, verbose=0), model.predict(cal.inputs, verbose=0)
        imbalance_after = _imbalance(pairs)
    assert record["pairs"] == 17 and record["clamped"] > 0 and record["scale_range"][1] > 1.5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # restored bit for bit
    # measured: 0.72 -> 0.61 (the 2195 of 2608 channels near the clamp keep scale 1); float model 127 dB on
    # calibration and held-out images
    assert imbalance_after < imbalance - 0.05, (imbalance, imbalance_after)
    assert _sqnr(out_cal, ref_cal) > 80 and _sqnr(out, ref) > 40, (_sqnr(out_cal, ref_cal), _sqnr(out, ref))


def test_relu6_bound_is_what_keeps_it_exact(demo):
    """Without the calibration bounds (Nagel's scales only, clamp ignored) the float model changes."""
    loaded, cal, _, _ = demo
    model = loaded.keras_model
    ref = model.predict(cal.inputs, verbose=0)
    plan = plan_equalization(loaded, cal.inputs)
    caps = [p.relu.max_value for p in plan.pairs]
    try:  # Nagel's rule with ReLU6 taken for ReLU
        for p in plan.pairs:
            p.relu.max_value = None
        record = plan_scales(plan.pairs, None)
    finally:
        for p, cap in zip(plan.pairs, caps):
            p.relu.max_value = cap
    assert record["clamped"] == 0
    with equalized(loaded, plan):
        out = model.predict(cal.inputs, verbose=0)
    assert _sqnr(out, ref) < 60, _sqnr(out, ref)


def test_the_stage_equalises_int8_weights_only_and_says_so(tmp_path):
    from edgeship.quantize import quantize

    on = quantize(out=tmp_path / "on", formats=["tflite"], precisions=["int8", "fp16"], num_samples=32,
                  progress=False, cross_layer_equalization=True, ptq="fast")
    recipes = {p.name: json.loads(r.read_text()) for p, r in zip(on.paths, on.recipes)}
    int8, fp16 = recipes["edgeship_demo_int8.tflite"], recipes["edgeship_demo_fp16.tflite"]
    assert int8["options"]["cross_layer_equalization"] is True and int8["cross_layer_equalization"]["pairs"] == 17
    assert "cross_layer_equalization" not in fp16
