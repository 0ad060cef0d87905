"""Comparison metrics: an enum of names plus one pure function each.

Every function takes the reference outputs and the artifact's outputs, both (N, classes) float arrays in the
reference's label order, and returns a float, or None when there is nothing to measure (no samples). Division by
zero is handled explicitly: identical outputs have infinite SQNR; two all-zero vectors have cosine 1.

Agreement by confidence: a flip (top-1 of the artifact differs from the reference's) between two near-tied classes
is not the same event as a confident answer that changed. The reference's **top-1 margin** (its top-1 probability
minus the runner-up's; :func:`top1_margin`) tells them apart. The probabilities are the model's own outputs when it
ends in a softmax (``ModelSpec.outputs_probabilities``, read from the model's last layer when it is loaded), else
the softmax of its logits. Flips are counted per margin bin (:func:`flips_by_margin`; the bin edges and the
confident margin are policy, ``[confidence]`` in ``policy.toml``), and ``confident_flips`` is the share of samples
with margin >= the confident margin whose top-1 changed.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from edgeship.numerics import sqnr_from_powers, top1_agreement  # noqa: F401  (two of this module's metrics)


class Metric(str, Enum):
    MAX_ABS_ERROR = "max_abs_error"
    MEAN_ABS_ERROR = "mean_abs_error"
    COSINE = "cosine"
    SQNR_DB = "sqnr_db"
    TOP1_AGREEMENT = "top1_agreement"
    TOP5_OVERLAP = "top5_overlap"
    ACCURACY_TOP1 = "accuracy_top1"
    ACCURACY_TOP5 = "accuracy_top5"
    ACCURACY_TOP1_DROP = "accuracy_top1_drop"
    EQUAL_VALUES = "equal_values"
    # Share of the confident samples (the reference's top-1 margin >= the policy's confident_margin) whose top-1
    # changed: a confident answer that changed, told apart from a flip between near-tied classes
    CONFIDENT_FLIPS = "confident_flips"
    # The same file through a second kernel path of its runtime (edgeship.runtimes.KERNEL_PATHS), against the first
    KERNEL_PATH_TOP1_AGREEMENT = "kernel_path_top1_agreement"
    KERNEL_PATH_EQUAL_VALUES = "kernel_path_equal_values"
    KERNEL_PATH_SQNR_DB = "kernel_path_sqnr_db"
    # Multi-label (sigmoid) outputs: share of the (sample, label) decisions, score >= the policy's threshold, that
    # equal the reference's; mean average precision over the labels that have positives (labelled data only), and
    # its drop from the reference's
    LABEL_AGREEMENT = "label_agreement"
    MEAN_AVERAGE_PRECISION = "mean_average_precision"
    MEAN_AVERAGE_PRECISION_DROP = "mean_average_precision_drop"
    # Embeddings: the lowest per-sample cosine similarity (the mean is ``cosine``), and the share of samples whose
    # nearest neighbour in the data set (by cosine, itself excluded) is the same sample in both
    COSINE_MIN = "cosine_min"
    NEIGHBOUR_AGREEMENT = "neighbour_agreement"

    def __str__(self) -> str:
        return self.value


#: Default margin bins and confident margin (overridden by the policy's ``[confidence]`` table): see policy.toml.
MARGIN_BINS = (0.1, 0.3)
CONFIDENT_MARGIN = 0.3

#: Which way each metric must go to pass a gate (policy files give only the limit).
HIGHER_IS_BETTER: dict[Metric, bool] = {
    Metric.MAX_ABS_ERROR: False,
    Metric.MEAN_ABS_ERROR: False,
    Metric.COSINE: True,
    Metric.SQNR_DB: True,
    Metric.TOP1_AGREEMENT: True,
    Metric.TOP5_OVERLAP: True,
    Metric.ACCURACY_TOP1: True,
    Metric.ACCURACY_TOP5: True,
    Metric.ACCURACY_TOP1_DROP: False,
    Metric.EQUAL_VALUES: True,
    Metric.CONFIDENT_FLIPS: False,
    Metric.KERNEL_PATH_TOP1_AGREEMENT: True,
    Metric.KERNEL_PATH_EQUAL_VALUES: True,
    Metric.KERNEL_PATH_SQNR_DB: True,
    Metric.LABEL_AGREEMENT: True,
    Metric.MEAN_AVERAGE_PRECISION: True,
    Metric.MEAN_AVERAGE_PRECISION_DROP: False,
    Metric.COSINE_MIN: True,
    Metric.NEIGHBOUR_AGREEMENT: True,
}

#: The metrics of each output kind (the others stay None for it, so no gate of another kind applies).
KIND_METRICS: dict[str, tuple[Metric, ...]] = {
    "classification": (Metric.MAX_ABS_ERROR, Metric.MEAN_ABS_ERROR, Metric.COSINE, Metric.SQNR_DB,
                       Metric.TOP1_AGREEMENT, Metric.TOP5_OVERLAP, Metric.ACCURACY_TOP1, Metric.ACCURACY_TOP5,
                       Metric.ACCURACY_TOP1_DROP, Metric.EQUAL_VALUES, Metric.CONFIDENT_FLIPS),
    "multilabel": (Metric.MAX_ABS_ERROR, Metric.MEAN_ABS_ERROR, Metric.COSINE, Metric.SQNR_DB, Metric.EQUAL_VALUES,
                   Metric.LABEL_AGREEMENT, Metric.MEAN_AVERAGE_PRECISION, Metric.MEAN_AVERAGE_PRECISION_DROP),
    "embedding": (Metric.MAX_ABS_ERROR, Metric.MEAN_ABS_ERROR, Metric.COSINE, Metric.COSINE_MIN, Metric.SQNR_DB,
                  Metric.EQUAL_VALUES, Metric.NEIGHBOUR_AGREEMENT),
}

#: Default decision threshold of multi-label scores (the policy's ``[multilabel] threshold``).
LABEL_THRESHOLD = 0.5
#: Score bins of the average-precision histograms (scores are in [0, 1]); ties within a bin count as one
#: threshold, so AP is exact to 1/AP_BINS in score.
AP_BINS = 1000
#: At most this many samples' embeddings are kept for nearest-neighbour agreement (the first ones).
MAX_NEIGHBOUR_SAMPLES = 2000


def max_abs_error(ref: np.ndarray, out: np.ndarray) -> float | None:
    return float(np.max(np.abs(out - ref))) if ref.size else None


def mean_abs_error(ref: np.ndarray, out: np.ndarray) -> float | None:
    return float(np.mean(np.abs(out - ref))) if ref.size else None


def cosine(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Mean over samples of the cosine similarity of the two output vectors."""
    if not len(ref):
        return None
    return float(np.mean(per_sample_cosine(ref, out)))


def per_sample_cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    r, o = ref.astype(np.float64), out.astype(np.float64)
    nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
    dot = np.sum(r * o, axis=1)
    both_zero = (nr == 0) & (no == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, np.where((nr == 0) | (no == 0), 0.0, dot / (nr * no)))
    return cos


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float | None:
    """10·log10(signal power / noise power) over all values; inf when the outputs are identical."""
    if not ref.size:
        return None
    return sqnr_from_powers(float(np.sum(ref.astype(np.float64) ** 2)),
                            float(np.sum((out.astype(np.float64) - ref) ** 2)))


def top5_overlap(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Mean fraction of the reference's top-5 classes that are also in the artifact's top-5."""
    if not len(ref):
        return None
    return float(np.mean(per_sample_top5_overlap(ref, out)))


def per_sample_top5_overlap(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    k = min(5, ref.shape[1])
    a = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    b = np.argsort(-out, axis=1, kind="stable")[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())])


def accuracy_top1(out: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(out.argmax(1) == labels)) if len(out) else None


def accuracy_top5(out: np.ndarray, labels: np.ndarray) -> float | None:
    if not len(out):
        return None
    k = min(5, out.shape[1])
    top = np.argsort(-out, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def top1_margin(ref: np.ndarray, probabilities: bool) -> np.ndarray:
    """(N,) top-1 probability minus the runner-up's, in [0, 1], for the reference outputs ``ref`` (N, classes):
    the outputs themselves when they are probabilities, else their softmax (computed stably, in float64). One class:
    margin 1."""
    p = ref.astype(np.float64)
    if not probabilities:
        p = np.exp(p - p.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def flips_by_margin(margin: np.ndarray, agree: np.ndarray, edges: tuple[float, ...]) -> list[dict[str, float | int]]:
    """Samples and flips per bin of the reference's top-1 ``margin`` (N,), ``agree`` (N,) bool: one bin per
    interval ``[lo, hi)`` of ``(0, *edges, 1]`` (the last one closed). Each: ``{"margin_from", "margin_to",
    "samples", "flips"}``."""
    bounds = [0.0, *[float(e) for e in edges], 1.0]
    out = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        last = i == len(bounds) - 2
        inside = (margin >= lo) & ((margin <= hi) if last else (margin < hi))
        out.append({"margin_from": lo, "margin_to": hi, "samples": int(inside.sum()),
                    "flips": int((inside & ~agree).sum())})
    return out


def confident_flips(ref: np.ndarray, out: np.ndarray, probabilities: bool, confident_margin: float) -> float | None:
    """Share of the samples whose reference margin (:func:`top1_margin`) is at least ``confident_margin`` and whose
    top-1 changed; None when no sample is that confident."""
    margin = top1_margin(ref, probabilities)
    sure = margin >= confident_margin
    if not sure.any():
        return None
    return float(np.mean(ref[sure].argmax(1) != out[sure].argmax(1)))


def label_decisions(ref: np.ndarray, out: np.ndarray, threshold: float) -> tuple[int, int]:
    """(equal, total) (sample, label) decisions ``score >= threshold`` of the multi-label scores ``ref``, ``out``
    (N, labels); a count pair, so batches add up."""
    equal = int(np.count_nonzero((ref >= threshold) == (out >= threshold)))
    return equal, int(ref.size)


class PrecisionHistogram:
    """Average precision per label from score histograms: per label, how many positive and negative samples
    scored in each of ``bins`` equal bins of [0, 1]. Batches add (``add``), histograms merge (``merge``: sums), and
    :meth:`mean_average_precision` ranks the bins from the highest score down, so AP is that of the ranking with
    ties within a bin (the VOC/COCO-style sum of precision at each recall step, labels without positives left
    out; Everingham et al. 2010)."""

    def __init__(self, num_labels: int, bins: int = AP_BINS) -> None:
        self.bins = bins
        self.positives = np.zeros((num_labels, bins), np.int64)
        self.negatives = np.zeros((num_labels, bins), np.int64)

    def add(self, scores: np.ndarray, truth: np.ndarray) -> None:
        """``scores`` (N, labels) in [0, 1] (clipped); ``truth`` (N,) class indices or (N, labels) 0/1."""
        if truth.ndim == 1:
            onehot = np.zeros(scores.shape, bool)
            onehot[np.arange(len(truth)), truth] = True
        else:
            onehot = truth.astype(bool)
        idx = np.clip((np.clip(scores, 0.0, 1.0) * self.bins).astype(np.int64), 0, self.bins - 1)
        labels = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        np.add.at(self.positives, (labels[onehot], idx[onehot]), 1)
        np.add.at(self.negatives, (labels[~onehot], idx[~onehot]), 1)

    def merge(self, other: "PrecisionHistogram") -> None:
        self.positives += other.positives
        self.negatives += other.negatives

    def mean_average_precision(self) -> float | None:
        tp = np.cumsum(self.positives[:, ::-1], axis=1)
        fp = np.cumsum(self.negatives[:, ::-1], axis=1)
        total = tp[:, -1]
        has = total > 0
        if not has.any():
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall_step = np.diff(np.concatenate([np.zeros((len(tp), 1)), tp], axis=1), axis=1)
        ap = (precision * recall_step).sum(axis=1)[has] / total[has]
        return float(np.mean(ap))


def nearest_neighbour_agreement(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Share of samples whose nearest neighbour by cosine similarity among the other samples is the same in the
    reference's embeddings ``ref`` and the artifact's ``out`` (N, d); None under 2 samples. A retrieval or
    face-matching client answers with the nearest neighbour, so this is the answer that must not change."""
    if len(ref) < 2:
        return None

    def nearest(e: np.ndarray) -> np.ndarray:
        e = e.astype(np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(nearest(ref) == nearest(out)))


class Stream:
    """Mergeable streaming statistics, the state every accumulating metric keeps (:class:`compare.Comparison`).

    Three kinds of partials, each mergeable so that statistics gathered over shards of a data set and merged equal
    the statistics of the whole, bit for bit (what the Ray executor relies on, ``edgeship.validate.executors``):

    - ``count(name, n)``: integers (equal values, value counts), summed;
    - ``add(name, x)``: one float partial sum per batch (signal and noise power, sum of absolute errors), kept as a
      list and totalled with :func:`math.fsum` (the correctly rounded sum, so independent of the grouping and order
      of the partials);
    - ``extend(name, array)``: per-sample arrays ((n,) per batch: max error, cosine, agreement, margin, ...),
      concatenated in sample order, so every mean, max or bin count over them is the whole set's.

    ``merge(other)`` appends ``other``'s partials after this one's: merge shards in data-set order. Merging is
    exact when each shard covers whole batches of the single stream (per-batch sums are then the same numbers).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sums: dict[str, list[float]] = {}
        self.samples: dict[str, list[np.ndarray]] = {}

    def count(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def add(self, name: str, x: float) -> None:
        self.sums.setdefault(name, []).append(float(x))

    def extend(self, name: str, values: np.ndarray) -> None:
        self.samples.setdefault(name, []).append(np.asarray(values))

    def total(self, name: str) -> float:
        import math

        return math.fsum(self.sums.get(name, ()))

    def n(self, name: str) -> int:
        return self.counts.get(name, 0)

    def values(self, name: str) -> np.ndarray:
        """The per-sample values of ``name`` over every batch, in sample order ((0,) when none)."""
        parts = self.samples.get(name)
        return np.concatenate(parts) if parts else np.zeros(0)

    def has(self, name: str) -> bool:
        return bool(self.samples.get(name))

    def merge(self, other: "Stream") -> "Stream":
        for k, v in other.counts.items():
            self.count(k, v)
        for k, s in other.sums.items():
            self.sums.setdefault(k, []).extend(s)
        for k, a in other.samples.items():
            self.samples.setdefault(k, []).extend(a)
        return self
