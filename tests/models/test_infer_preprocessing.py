"""Preprocessing inferred from the model's behaviour (edgeship.models.infer_preprocessing, issue 23 item 2), on the
demo model and its held-out digits: the correct declaration holds, planted wrong ones are caught naming the right
one, nothing declared infers the demo's convention, and a random-init model (whose outputs barely depend on the
input) leaves it undecided. Each (convention, view) of a model runs once: the tests share a memoised predict."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import pytest

from edgeship.models import infer_preprocessing as ip
from edgeship.models.spec import Preprocessing

CORRECT = Preprocessing()  # the demo was trained on (x - 127.5) / 127.5, RGB
PLANTED = {
    "[0, 1] instead of [-1, 1]": Preprocessing(mean=(0.0,) * 3, std=(255.0,) * 3),
    "raw pixels": Preprocessing.identity(),
    "BGR": Preprocessing(color="bgr"),
}


def _memoised(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    inner = ip.as_predict(model)
    cache: dict[bytes, np.ndarray] = {}

    def predict(x: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest()
        if key not in cache:
            cache[key] = inner(x)
        return cache[key]
    return predict


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR, load_model

    loaded = load_model(echo=lambda _: None)
    ds = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=loaded.spec.labels)
    return {"predict": _memoised(loaded), "model": loaded, "images": ds.images, "labels": ds.labels,
            "probabilities": loaded.spec.outputs_probabilities}


MODES = ["labels", "no-labels", "no-labels-mi-only"]


def _infer(demo: dict[str, Any], mode: "str | bool", **kw: Any) -> ip.InferenceResult:
    """``mode``: "labels" (accuracy), "no-labels" (mutual information and the first-BatchNorm fit),
    "no-labels-mi-only" (a bare predict function: the mutual information alone)."""
    mode = {True: "labels", False: "no-labels"}.get(mode, mode)  # type: ignore[arg-type]
    return ip.infer_preprocessing(demo["predict"], demo["images"], labels=demo["labels"] if mode == "labels" else None,
                                  probabilities=demo["probabilities"],
                                  keras_model=demo["model"] if mode == "no-labels" else None, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_correct_declaration_holds(demo: dict[str, Any], mode: str) -> None:
    labelled = mode == "labels"
    r = _infer(demo, mode, declared=CORRECT, source="declared")
    assert r.verdict is ip.Verdict.OK, r.message
    assert r.best.declared and r.best.name == "[-1, 1]"
    assert r.chosen == CORRECT
    assert r.samples == (ip.MAX_IMAGES if labelled else ip.MAX_IMAGES_UNLABELLED)
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates), reverse=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_planted_wrong_declaration_is_caught(demo: dict[str, Any], mode: str, planted: str) -> None:
    labelled = mode == "labels"
    declared = PLANTED[planted]
    r = _infer(demo, mode, declared=declared, source="declared")
    assert r.verdict is ip.Verdict.WRONG, r.message
    assert not bool(r)
    assert r.best.name == "[-1, 1]" and r.declared.preprocessing == declared
    assert r.best.score > r.declared.score
    # one line naming both figures and the fix
    assert "\n" not in r.message and "(x - 127.5) / 127.5" in r.message and "--mean 127.5 --std 127.5" in r.message
    if mode == "no-labels":  # the first-BatchNorm fit decided and is quoted
        assert "misfit" in r.message and "bn_misfit" in r.declared.figures
    if labelled:
        assert f"{r.declared.score:.1%}" in r.message and f"{r.best.score:.1%}" in r.message
        assert r.p_value < ip.ALPHA
    if declared.color.value == "bgr":
        assert "without --bgr" in r.message


@pytest.mark.parametrize("mode", MODES)
def test_nothing_declared_infers_the_demo_convention(demo: dict[str, Any], mode: str) -> None:
    r = _infer(demo, mode, source="assumed")
    assert r.verdict is ip.Verdict.INFERRED, r.message
    assert r.chosen == CORRECT and r.best.name == "[-1, 1]"
    assert "inferred (x - 127.5) / 127.5" in r.message


def test_a_declaration_outside_the_conventions_is_ranked_too(demo: dict[str, Any]) -> None:
    """A declared mean/std that is no listed convention joins the ranking as "declared" (and loses here)."""
    odd = Preprocessing(mean=(100.0, 100.0, 100.0), std=(30.0, 30.0, 30.0))
    r = _infer(demo, True, declared=odd, source="declared")
    assert any(c.name == "declared" and c.declared for c in r.candidates)
    assert r.verdict is ip.Verdict.WRONG and r.best.name == "[-1, 1]", r.message


@pytest.fixture(scope="module")
def random_init() -> Any:
    from edgeship._tf import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10,
                                       classifier_activation=None)
    return _memoised(model)  # one traced function for both tests


@pytest.mark.parametrize("labelled", [True, False], ids=["labels", "no-labels"])
def test_random_init_model_is_undecided(demo: dict[str, Any], random_init: Any, labelled: bool) -> None:
    r = ip.infer_preprocessing(random_init, demo["images"], labels=demo["labels"] if labelled else None,
                               probabilities=False, source="assumed", max_images=32)
    assert r.verdict is ip.Verdict.UNDECIDED, r.message
    assert r.chosen is None and not bool(r)
    assert "declare the model's preprocessing" in r.message


def test_mcnemar_exact() -> None:
    better = np.array([True] * 10 + [False] * 0 + [True] * 5)
    worse = np.array([False] * 10 + [True] * 0 + [True] * 5)
    assert ip.mcnemar_p(better, worse) == pytest.approx(2.0 ** -10)
    assert ip.mcnemar_p(worse, better) == 1.0
    assert ip.mcnemar_p(better, better) == 1.0


def test_mutual_information_extremes() -> None:
    k = 4
    confident_diverse = np.eye(k)[None].repeat(2, 0)  # (V, N, K): each image sure, all different
    collapsed = np.tile(np.eye(k)[:1], (k, 1))[None]  # every image the same class
    flat = np.full((1, k, k), 1.0 / k)
    assert ip.mutual_information(confident_diverse) == pytest.approx(np.log(k))
    assert ip.mutual_information(collapsed) == pytest.approx(0.0)
    assert ip.mutual_information(flat) == pytest.approx(0.0)
    unstable = np.stack([np.eye(k), np.roll(np.eye(k), 1, axis=0)])  # a view changes every answer
    assert ip.mutual_information(unstable) < ip.mutual_information(confident_diverse) - 0.5


def test_first_batchnorm_fit_ranks_the_training_range_first(demo: dict[str, Any]) -> None:
    from edgeship._tf import keras
    from edgeship.models.infer_scores import bn_misfit, first_bn_probe

    probe = first_bn_probe(demo["model"])
    assert probe is not None
    stem, mean, var = probe
    images = demo["images"][::12]
    misfit = {name: bn_misfit(np.asarray(stem(pre.apply(images)), np.float64), mean, var)
              for name, pre in (("correct", CORRECT), *PLANTED.items())}
    for name in PLANTED:
        assert misfit[name] > misfit["correct"] + ip.MIN_BN_GAIN, misfit
    # no training statistics to compare with: a random-init model, or a stem that normalises before its conv
    k = keras()
    model = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    assert first_bn_probe(model) is None
    inp = k.Input((96, 96, 3))
    wrapped = k.Model(inp, demo["model"].keras_model(k.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)))
    assert first_bn_probe(wrapped) is None
