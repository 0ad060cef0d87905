"""Mergeable streaming statistics: what a comparison keeps between batches, and what the Ray executor merges
shard by shard (:class:`edgeship.validate.compare.Comparison`)."""

from __future__ import annotations

import math
from enum import Enum

import numpy as np

#: Score bins of the average-precision histograms (scores are in [0, 1]); ties within a bin count as one
#: threshold, so AP is exact to 1/AP_BINS in score.
AP_BINS = 1000


class Merge(str, Enum):
    """How one partial statistic adds up over batches and merges across shards (:class:`Stream`)."""

    COUNT = "count"  # integers, summed
    SUM = "sum"  # one float partial sum per batch, totalled with math.fsum
    SAMPLES = "samples"  # per-sample arrays, concatenated in sample order
    HISTOGRAM = "histogram"  # per-label score histograms (PrecisionHistogram), summed

    def __str__(self) -> str:
        return self.value


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



class Stream:
    """Mergeable streaming statistics, the state every accumulating metric keeps (:class:`compare.Comparison`).

    Three kinds of partials, each mergeable so that statistics gathered over shards of a data set and merged equal
    the statistics of the whole, bit for bit (what the Ray executor relies on, ``edgeship.validate.executors``):

    - ``count(name, n)``: integers (equal values, value counts), summed;
    - ``add(name, x)``: one float partial sum per batch (signal and noise power, sum of absolute errors), kept as a
      list and totalled with :func:`math.fsum` (the correctly rounded sum, so independent of the grouping and order
      of the partials);
    - ``extend(name, array)``: per-sample arrays ((n,) per batch: max error, cosine, agreement, margin, ...),
      concatenated in sample order, so every mean, max or bin count over them is the whole set's;
    - ``histogram(name, scores, truth)``: per-label score histograms (:class:`PrecisionHistogram`), summed.

    ``merge(other)`` appends ``other``'s partials after this one's: merge shards in data-set order. Merging is
    exact when each shard covers whole batches of the single stream (per-batch sums are then the same numbers).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sums: dict[str, list[float]] = {}
        self.samples: dict[str, list[np.ndarray]] = {}
        self.histograms: dict[str, PrecisionHistogram] = {}

    def count(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def add(self, name: str, x: float) -> None:
        self.sums.setdefault(name, []).append(float(x))

    def extend(self, name: str, values: np.ndarray) -> None:
        self.samples.setdefault(name, []).append(np.asarray(values))

    def histogram(self, name: str, scores: np.ndarray, truth: np.ndarray) -> None:
        if name not in self.histograms:
            self.histograms[name] = PrecisionHistogram(scores.shape[1])
        self.histograms[name].add(scores, truth)

    def record(self, name: str, merge: Merge, value: object) -> None:
        """Add one batch's ``value`` of the partial ``name`` the way it merges (:class:`Merge`)."""
        if merge is Merge.COUNT:
            self.count(name, value)  # type: ignore[arg-type]
        elif merge is Merge.SUM:
            self.add(name, value)  # type: ignore[arg-type]
        elif merge is Merge.SAMPLES:
            self.extend(name, value)  # type: ignore[arg-type]
        else:
            self.histogram(name, *value)  # type: ignore[misc]

    def total(self, name: str) -> float:
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
        for k, h in other.histograms.items():
            if k in self.histograms:
                self.histograms[k].merge(h)
            else:
                self.histograms[k] = h
        return self
