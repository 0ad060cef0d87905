"""The float fallback ranks ops by their own contribution to the output error and spends a size budget
(:mod:`edgeship.quantize.techniques.fallback`), on the demo model."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.models.loading import DEMO_DIR

N_CALIBRATION = 16
DEAD = "block_1_depthwise_BN"  # channel DEAD_CHANNEL of block_1_depthwise_relu is made always 0
HOSTILE = "block_1_project"  # its weights from that channel are made 100x the filter's largest
PLANTED = "block_1_project_BN"  # the report's name of the fused block_1_project + BN op
DEAD_CHANNEL, OUTLIER = 0, 100.0


@pytest.fixture(scope="module")
def calibration():
    from edgeship.data import load_image_folder
    from edgeship.models.loading import load_model

    loaded = load_model()
    cal = load_image_folder(DEMO_DIR / "calibration", (96, 96), class_names=loaded.spec.labels)
    pick = np.random.default_rng(0).permutation(len(cal.images))[:N_CALIBRATION]
    return loaded.spec.preprocessing.apply(cal.images[pick])


@pytest.fixture(scope="module")
def planted(calibration):
    """The demo model with a quantisation-hostile layer planted: one channel of block_1_depthwise_relu made always
    0 (its BatchNormalization's gamma 0, beta -1, before the ReLU6), and block_1_project's weights from that dead
    channel set to OUTLIER times each filter's largest weight. The float model ignores them (their input is 0),
    but per-channel int8 weights take their scale from them, so every other weight of block_1_project rounds to
    about 0: block_1_project makes a large error of its own, which every later layer carries (a dead channel
    with large weights is how this arises in trained models). Returns (loaded, calibrated flatbuffer, all-int8
    result, options)."""
    from edgeship.models.loading import layer_paths, load_model
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    loaded = load_model()  # a fresh copy: the weights are edited
    layers = {p[-1]: la for p, la in layer_paths(loaded.keras_model)}
    gamma, beta, mean, var = layers[DEAD].get_weights()
    gamma[DEAD_CHANNEL], beta[DEAD_CHANNEL] = 0.0, -1.0
    layers[DEAD].set_weights([gamma, beta, mean, var])
    before = loaded.keras_model.predict(calibration[:8], verbose=0)
    kernel, *rest = layers[HOSTILE].get_weights()
    kernel[:, :, DEAD_CHANNEL, :] = OUTLIER * np.abs(kernel).max(axis=(0, 1, 2))
    layers[HOSTILE].set_weights([kernel, *rest])
    np.testing.assert_allclose(loaded.keras_model.predict(calibration[:8], verbose=0), before, atol=1e-6)
    calibrated = calibrate(loaded, calibration)
    opts = {"io_dtype": "uint8", "relu6_fixed": True, "input_range": loaded.spec.preprocessing.value_range}
    return loaded, calibrated, quantize_calibrated(calibrated, **opts), opts


def test_own_contribution_ranking_finds_the_planted_layer(planted, calibration):
    """The planted layer makes the error; the layers after it only carry it, and their accumulated SQNR is worse
    than its own. Ranking by accumulated SQNR keeps a later layer; ranking by own contribution keeps the planted
    one, and the output gains more."""
    from edgeship.quantize.techniques.fallback import keep_float, predict
    from edgeship.quantize.layers import LayerNames, tensor_sqnr
    from edgeship.numerics import sqnr_from_powers

    loaded, calibrated, first, opts = planted
    sqnr = tensor_sqnr(calibrated, first.model, calibration, max_samples=8)
    names = LayerNames(loaded.keras_model).names(sqnr)
    planted_sqnr = next(v for t, v in sqnr.items() if names[t] == PLANTED)
    assert min(sqnr.values()) < planted_sqnr  # later layers look worse than the one making the error

    own = keep_float(calibrated, first, calibration, sqnr, 1, rank="own", keras_model=loaded.keras_model, **opts)
    old = keep_float(calibrated, first, calibration, sqnr, 1, rank="accumulated", keras_model=loaded.keras_model,
                     **opts)
    assert own.kept == [PLANTED] and own.candidates[0].gain_db > 6.0
    assert old.kept != [PLANTED]

    ref = predict(calibrated, calibration).astype(np.float64)

    def out_sqnr(model: bytes) -> float:
        return sqnr_from_powers(float(np.sum(ref**2)), float(np.sum((ref - predict(model, calibration)) ** 2)))

    assert out_sqnr(own.result.model) > out_sqnr(old.result.model) + 3.0
    assert own.describe()["kept_ops"][0]["layer"] == PLANTED


def test_size_budget_is_respected(planted, calibration):
    """With a budget barely above the all-int8 file, "auto" (asked for no disagreement at all) keeps only ops that
    fit, by gain per byte; the file it returns is within the budget, metadata overhead included."""
    from edgeship.quantize.techniques.fallback import AUTO_LIMIT, keep_float
    from edgeship.quantize.layers import tensor_sqnr

    loaded, calibrated, first, opts = planted
    sqnr = tensor_sqnr(calibrated, first.model, calibration, max_samples=8)
    overhead = 1000  # as if the file carried 1 kB of metadata
    tight = keep_float(calibrated, first, calibration, sqnr, "auto", max_drop=0.0, max_size="1.02x",
                       overhead=overhead, keras_model=loaded.keras_model, **opts)
    limit = int(1.02 * (len(first.model) + overhead))
    assert tight.budget == limit and tight.size == len(tight.result.model) + overhead <= limit
    assert PLANTED in tight.kept  # the planted op gains most per byte: it is taken
    assert len(tight.kept) <= AUTO_LIMIT
    record = tight.describe()
    assert record["max_size"] == "1.02x" and record["max_size_bytes"] == limit and record["size_bytes"] == tight.size


def test_budget_below_the_int8_file_is_refused(planted, calibration):
    from edgeship.errors import UserError
    from edgeship.quantize.techniques.fallback import keep_float

    loaded, calibrated, first, opts = planted
    with pytest.raises(UserError, match="smaller than the all-int8 file"):
        keep_float(calibrated, first, calibration, {}, "auto", max_size=f"{len(first.model) // 2}B", **opts)


@pytest.mark.parametrize(("text", "expected"), [("5MB", 5_000_000), ("4.5MiB", int(4.5 * 2**20)), ("800kB", 800_000),
                                                ("123456", 123456), ("2 GiB", 2 * 2**30)])
def test_parse_max_size_units(text, expected):
    from edgeship.quantize.techniques.fallback import parse_max_size

    assert parse_max_size(text).bytes == expected


@pytest.mark.parametrize("text", ["lots", "5XB", "-3MB", "0.5x", "x", "0"])
def test_bad_max_size_is_a_user_error(text):
    from edgeship.errors import UserError
    from edgeship.quantize.techniques.fallback import parse_max_size

    with pytest.raises(UserError, match="--max-size"):
        parse_max_size(text)


def test_max_size_needs_keep_float(tmp_path):
    from edgeship.errors import UserError
    from edgeship.quantize import quantize

    with pytest.raises(UserError, match="add --keep-float"):
        quantize(formats=["tflite"], out=tmp_path, max_size="1.3x", progress=False)
