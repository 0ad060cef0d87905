"""Feeding like the client (raw uint8 pixels into a uint8 input, as MediaPipe does; re-quantised floats for float
data), and agreement by confidence (flips split by the reference's top-1 margin, the confident_flips gate)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.data import load_image_folder
from edgeship.errors import UserError
from edgeship.export.common import ModelInfo
from edgeship.models.loading import DEMO_DIR
from edgeship.runtimes.runner import FEED_FLOAT, FEED_RAW, FEED_REQUANTISED
from edgeship.validate.compare import Comparison
from edgeship.validate.metrics import flips_by_margin, top1_margin
from edgeship.validate.pipeline import validate
from edgeship.validate.policy import Policy, load_policy
from edgeship.validate.results import Metrics, Status

FAST = dict(iterations=2, warmup=1, progress=False, kernel_path_samples=0)


@pytest.fixture(scope="module")
def int8_demo(tmp_path_factory, demo_calibrated):
    """The demo model, a uint8-input int8 TFLite of it (``quantize_tflite`` = calibrate + quantize_calibrated, from the
    session's one calibration on 32 images, ``demo_calibrated`` in tests/conftest.py; metadata kept), and 40
    held-out images as uint8 and as float32 .npy files."""
    from edgeship.metadata.tflite import add_metadata
    from edgeship.quantize.formats.tflite import quantize_calibrated

    loaded, _, calibrated = demo_calibrated
    out = tmp_path_factory.mktemp("feed")
    int8 = quantize_calibrated(calibrated, input_range=loaded.spec.preprocessing.value_range)
    path = out / "demo_int8.tflite"
    path.write_bytes(add_metadata(int8.model, loaded.spec, ModelInfo("demo")))
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), loaded.spec.labels)
    pick = np.arange(0, 360, 9)
    u8, f32 = out / "u8.npz", out / "f32.npz"
    np.savez(u8, images=held.images[pick], labels=held.labels[pick])
    np.savez(f32, images=held.images[pick].astype(np.float32), labels=held.labels[pick])
    return loaded, path, u8, f32, held.images[pick]


@pytest.fixture(scope="module")
def float_demo(demo_export):
    """The demo's fp32 TFLite (the session's one export, conftest.py)."""
    result = demo_export(formats=["tflite"])
    return result.out_dir / result.manifest.artifacts[0].path


def test_uint8_data_are_fed_raw_and_float_data_requantised(int8_demo):
    """uint8 data: the uint8 input gets the pixels themselves and the report says so; the same images as float32:
    normalised and re-quantised, reported as such. With zero point 127 for mean 127.5 the two feeds differ."""
    from edgeship.runtimes.litert import LiteRTRunner

    loaded, path, u8, f32, images = int8_demo
    runner = LiteRTRunner(path, loaded.spec.preprocessing).open()
    feed = runner.feed(images[:4])[runner.inputs()[0].name]
    assert runner.input_feed == FEED_RAW and feed.dtype == np.uint8 and np.array_equal(feed, images[:4])
    requant = runner.feed(images[:4].astype(np.float32))[runner.inputs()[0].name]
    assert runner.input_feed == FEED_REQUANTISED and not np.array_equal(requant, images[:4])
    assert np.abs(requant.astype(int) - images[:4]).max() == 1  # half a step, rounded one way or the other

    raw_report = validate([path], reference=loaded, data=u8, **FAST)
    float_report = validate([path], reference=loaded, data=f32, **FAST)
    (raw,), (flt,) = raw_report.artifacts, float_report.artifacts
    assert raw.input_feed == FEED_RAW and raw_report.data["pixels"] == "uint8"
    assert flt.input_feed == FEED_REQUANTISED and float_report.data["pixels"] == "float32"
    assert raw.metrics.sqnr_db != flt.metrics.sqnr_db  # the feeds really differ


def test_float_files_are_fed_normalised_floats_either_way(int8_demo, float_demo):
    loaded, _, u8, f32, _ = int8_demo
    path = float_demo
    for data in (u8, f32):
        (a,) = validate([path], reference=loaded, data=data, **FAST).artifacts
        assert a.status is Status.PASSED and a.input_feed == FEED_FLOAT


def test_raw_feed_is_what_mediapipe_answers(int8_demo, tmp_path):
    """MediaPipe Tasks' ImageClassifier on the uint8 file: the same top-1 class and score as the validator's raw
    feed, image by image."""
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    from edgeship.runtimes.litert import LiteRTRunner

    loaded, path, _, _, images = int8_demo
    runner = LiteRTRunner(path, loaded.spec.preprocessing).open()
    ours = runner.predict(images[:12])
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for im, row in zip(images[:12], ours):
            cat = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im))
                                      ).classifications[0].categories[0]
            assert cat.index in np.flatnonzero(row == row.max())
            assert cat.score == pytest.approx(float(row.max()), abs=1e-6)


# -- agreement by confidence --------------------------------------------------------------------------------------
PROBS = np.array([[0.52, 0.48, 0.00],   # margin 0.04: a near-tie
                  [0.60, 0.40, 0.00],   # 0.20
                  [0.90, 0.10, 0.00],   # 0.80: confident
                  [0.70, 0.30, 0.00],   # 0.40: confident
                  [0.05, 0.15, 0.80]])  # 0.65: confident
FLIPPED = np.array([[0.40, 0.60, 0.00],  # flips (near-tie)
                    [0.60, 0.40, 0.00],
                    [0.10, 0.90, 0.00],  # flips (confident)
                    [0.70, 0.30, 0.00],
                    [0.05, 0.15, 0.80]])


def test_margin_of_probabilities_and_of_logits():
    np.testing.assert_allclose(top1_margin(PROBS, probabilities=True), [0.04, 0.2, 0.8, 0.4, 0.65], atol=1e-12)
    # logits: softmax first; log-probabilities are logits whose softmax is PROBS
    logits = np.log(np.maximum(PROBS, 1e-12)) + 3.0
    np.testing.assert_allclose(top1_margin(logits, probabilities=False), [0.04, 0.2, 0.8, 0.4, 0.65], atol=1e-9)


def test_flips_are_split_by_the_reference_margin():
    c = Comparison(["a", "b", "c"], probabilities=True, margin_bins=(0.1, 0.3), confident_margin=0.3)
    images = np.zeros((5, 2, 2, 3), np.uint8)
    c.update(PROBS, FLIPPED, images, None, [f"array[{i}]" for i in range(5)], 0)
    assert c.flips_by_margin() == [
        {"margin_from": 0.0, "margin_to": 0.1, "samples": 1, "flips": 1},
        {"margin_from": 0.1, "margin_to": 0.3, "samples": 1, "flips": 0},
        {"margin_from": 0.3, "margin_to": 1.0, "samples": 3, "flips": 1},
    ]
    m = c.metrics()
    assert m.top1_agreement == pytest.approx(0.6) and m.confident_flips == pytest.approx(1 / 3)
    assert [round(f.margin, 6) for f in c.flips] == [0.04, 0.8]
    # the bins are policy: one edge, everything >= 0.5 confident
    c2 = Comparison(["a", "b", "c"], probabilities=True, margin_bins=(0.5,), confident_margin=0.5)
    c2.update(PROBS, FLIPPED, images, None, [""] * 5, 0)
    assert [b["samples"] for b in c2.flips_by_margin()] == [3, 2] and c2.metrics().confident_flips == 0.5
    assert flips_by_margin(np.array([1.0]), np.array([False]), (0.3,))[-1]["flips"] == 1  # 1.0 is in the last bin


def test_confident_flips_gate_fails_above_its_limit(tmp_path):
    policy = load_policy()
    limit = policy.limits_for("tflite", "int8")["confident_flips"]
    (gate,) = [g for g in policy.gate_metrics("tflite", "int8", Metrics(confident_flips=limit + 0.01))
               if g.name == "confident_flips"]
    assert not gate.passed and gate.op == "<="
    (ok,) = [g for g in policy.gate_metrics("tflite", "int8", Metrics(confident_flips=0.0))
             if g.name == "confident_flips"]
    assert ok.passed
    # the [confidence] table is policy: a user file overrides it key by key, and bad values are refused
    user = tmp_path / "p.toml"
    user.write_text("[confidence]\nconfident_margin = 0.5\n")
    p = load_policy(user)
    assert p.confident_margin == 0.5 and p.margin_bins == load_policy().margin_bins
    for bad in ("margin_bins = [0.3, 0.1]", "confident_margin = 0", "margin_bins = [1.5]", "bins = [0.1]"):
        user.write_text(f"[confidence]\n{bad}\n")
        with pytest.raises(UserError, match="confidence"):
            load_policy(user)


def test_confident_answers_that_change_fail_the_release(int8_demo, float_demo, tmp_path):
    """End to end: a float TFLite whose labels are in the wrong order changes confident answers; with only the
    confident_flips gate in force it fails on that gate, and the report splits its flips by margin."""
    from edgeship.metadata.tflite import add_metadata

    loaded, _, u8, _, _ = int8_demo
    good = float_demo
    bad = tmp_path / "labels.tflite"
    bad.write_bytes(add_metadata(good.read_bytes(), loaded.spec.replace(labels=tuple(reversed(loaded.spec.labels))),
                                 ModelInfo("demo")))
    policy = Policy(metric_limits={"fp32": {"confident_flips": 0.01}})
    report = validate([bad], reference=loaded, data=u8, policy=policy, **FAST)
    (a,) = report.artifacts
    assert a.status is Status.FAILED and a.reason.startswith("confident_flips")
    assert a.metrics.confident_flips > 0.5
    assert sum(b["flips"] for b in a.flips_by_margin) == len(a.flips)
    assert report.confidence["confident_margin"] == 0.3 and "from the softmax of its logits" in report.confidence["margin"]
