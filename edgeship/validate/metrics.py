"""Comparison metrics: an enum of names, one pure function each, and the registry (:data:`REGISTRY`, at the end)
that declares each metric once: direction, unit, output kinds, what it needs, the partial statistics it streams
(merged across shards by :class:`Stream`) and its value from them. The comparison loop
(:class:`edgeship.validate.compare.Comparison`), the policy's gates and schema, and the report's ``metrics`` fields
(:class:`edgeship.validate.results.Metrics`) all read it; a new metric is its :class:`Metric` member and its line.

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

Over 400 lines on purpose: each metric's function and its registry line side by side (a new metric is one
function and one line here).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Protocol

import numpy as np

from edgeship.numerics import sqnr_from_powers, top1_agreement  # noqa: F401  (two of this module's metrics)
from edgeship.types import OutputKind, _StrEnum
from edgeship.validate.stream import AP_BINS, Merge, PrecisionHistogram, Stream  # noqa: F401  (re-exported)


class Metric(_StrEnum):
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
    # Regression outputs (any tensor judged value by value): the largest absolute error over the reference's range
    # (its largest value minus its smallest, over all samples): an error in the output's own scale
    MAX_RELATIVE_ERROR = "max_relative_error"
    # Segmentation maps (N, H, W, classes): the share of pixels whose class (the argmax over the last axis) equals
    # the reference's; the mean over classes of the IoU of the artifact's and the reference's class maps (each
    # class's intersection and union summed over the data set; classes neither map uses left out), and the lowest
    # class IoU
    PIXEL_AGREEMENT = "pixel_agreement"
    MEAN_IOU = "mean_iou"
    CLASS_IOU_MIN = "class_iou_min"
    # With ground-truth masks (labelled data): the artifact's mIoU against the truth, and its drop from the
    # reference's (pixels marked 255 in a mask, "ignore", left out)
    MEAN_IOU_TRUTH = "mean_iou_truth"
    MEAN_IOU_TRUTH_DROP = "mean_iou_truth_drop"


#: Default margin bins and confident margin (overridden by the policy's ``[confidence]`` table): see policy.toml.
MARGIN_BINS = (0.1, 0.3)
CONFIDENT_MARGIN = 0.3

#: Default decision threshold of multi-label scores (the policy's ``[multilabel] threshold``).
LABEL_THRESHOLD = 0.5
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


# ---- the registry: one declaration per metric, read by the comparison, the policy and the report ------------------
class Unit(_StrEnum):
    """What a metric's value (and so a gate's limit) is measured in."""

    FRACTION = "fraction"  # a share in [0, 1] (counts over n): limits in [0, 1], gated within FRACTION_SLACK
    DB = "dB"  # decibels (SQNR)
    OUTPUT = "output"  # the output's own units (an error): limits >= 0
    COSINE = "cosine"  # a cosine similarity in [-1, 1]


class Batch:
    """One batch of reference outputs ``ref`` and artifact outputs ``out`` (N, values), in the reference's label
    order, with the figures several partials share computed once."""

    def __init__(self, ref: np.ndarray, out: np.ndarray, truth: np.ndarray | None, probabilities: bool,
                 threshold: float, classes: int | None = None) -> None:
        self.ref, self.out, self.truth = ref, out, truth
        self.probabilities, self.threshold = probabilities, threshold
        self.classes = classes or (ref.shape[1] if ref.ndim == 2 else 1)

    @cached_property
    def pixel_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference, artifact) class per pixel (N, pixels) of a segmentation map flattened to (N, pixels *
        classes): the argmax over each pixel's ``classes`` scores."""
        n = len(self.ref)
        return (self.ref.reshape(n, -1, self.classes).argmax(-1), self.out.reshape(n, -1, self.classes).argmax(-1))

    @cached_property
    def class_overlap(self) -> tuple[np.ndarray, np.ndarray]:
        """(intersection, union) pixel counts per sample and class (N, classes) of the two class maps."""
        return overlap(*self.pixel_classes, self.classes)

    @cached_property
    def truth_overlaps(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(intersection, union) per sample and class of the reference's ([0]) and the artifact's ([1]) class map
        with the ground-truth masks ``truth`` (N, h, w); ignored pixels (``IGNORE_CLASS``, 255) count for neither."""
        from edgeship.data import IGNORE_CLASS

        truth = np.asarray(self.truth).reshape(len(self.ref), -1)
        return [overlap(maps, truth, self.classes, valid=truth != IGNORE_CLASS) for maps in self.pixel_classes]

    @cached_property
    def err(self) -> np.ndarray:
        return np.abs(self.out.astype(np.float64) - self.ref)

    @cached_property
    def top1(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ref.argmax(1), self.out.argmax(1)

    @cached_property
    def margin(self) -> np.ndarray:
        return top1_margin(self.ref, self.probabilities)

    @cached_property
    def decisions(self) -> tuple[int, int]:
        return label_decisions(self.ref, self.out, self.threshold)

    def correct5(self) -> np.ndarray:
        k, truth = min(5, self.out.shape[1]), np.asarray(self.truth)
        return (np.argsort(-self.out, axis=1, kind="stable")[:, :k] == truth[:, None]).any(axis=1)


@dataclass(frozen=True)
class Statistic:
    """A statistic kept over the batches: how it merges, and its value for one batch (None: nothing to add, e.g.
    no labels). ``first``: keep only the first so many samples (SAMPLES partials)."""

    merge: Merge
    batch: Callable[[Batch], object]
    first: int | None = None


def _labelled(fn: Callable[[Batch], object]) -> Callable[[Batch], object]:
    return lambda b: None if b.truth is None else fn(b)


#: Every partial statistic a metric may read, by name (the keys of :class:`Stream`).
PARTIALS: dict[str, Statistic] = {
    "max_abs": Statistic(Merge.SAMPLES, lambda b: b.err.max(axis=1)),
    "sum_abs": Statistic(Merge.SUM, lambda b: float(b.err.sum())),
    "values": Statistic(Merge.COUNT, lambda b: b.err.size),
    "equal": Statistic(Merge.COUNT, lambda b: int(np.count_nonzero(b.err == 0))),
    "signal": Statistic(Merge.SUM, lambda b: float(np.sum(b.ref.astype(np.float64) ** 2))),
    "noise": Statistic(Merge.SUM, lambda b: float(np.sum(b.err**2))),
    "cos": Statistic(Merge.SAMPLES, lambda b: per_sample_cosine(b.ref, b.out)),
    "decisions_equal": Statistic(Merge.COUNT, lambda b: b.decisions[0]),
    "decisions": Statistic(Merge.COUNT, lambda b: b.decisions[1]),
    "ref_ap": Statistic(Merge.HISTOGRAM, _labelled(lambda b: (b.ref, b.truth))),
    "out_ap": Statistic(Merge.HISTOGRAM, _labelled(lambda b: (b.out, b.truth))),
    "ref_emb": Statistic(Merge.SAMPLES, lambda b: np.asarray(b.ref, np.float32), first=MAX_NEIGHBOUR_SAMPLES),
    "out_emb": Statistic(Merge.SAMPLES, lambda b: np.asarray(b.out, np.float32), first=MAX_NEIGHBOUR_SAMPLES),
    "ref_min": Statistic(Merge.SAMPLES, lambda b: b.ref.min(axis=1)),
    "ref_max": Statistic(Merge.SAMPLES, lambda b: b.ref.max(axis=1)),
    "pixels_equal": Statistic(Merge.COUNT, lambda b: int(np.count_nonzero(b.pixel_classes[0] == b.pixel_classes[1]))),
    "pixels": Statistic(Merge.COUNT, lambda b: b.pixel_classes[0].size),
    "ref_truth_inter": Statistic(Merge.SAMPLES, _labelled(lambda b: b.truth_overlaps[0][0])),
    "ref_truth_union": Statistic(Merge.SAMPLES, _labelled(lambda b: b.truth_overlaps[0][1])),
    "out_truth_inter": Statistic(Merge.SAMPLES, _labelled(lambda b: b.truth_overlaps[1][0])),
    "out_truth_union": Statistic(Merge.SAMPLES, _labelled(lambda b: b.truth_overlaps[1][1])),
    "class_inter": Statistic(Merge.SAMPLES, lambda b: b.class_overlap[0]),
    "class_union": Statistic(Merge.SAMPLES, lambda b: b.class_overlap[1]),
    "top5": Statistic(Merge.SAMPLES, lambda b: per_sample_top5_overlap(b.ref, b.out)),
    "agree": Statistic(Merge.SAMPLES, lambda b: b.top1[0] == b.top1[1]),
    "margin": Statistic(Merge.SAMPLES, lambda b: b.margin),
    "ref_correct": Statistic(Merge.SAMPLES, _labelled(lambda b: b.top1[0] == b.truth)),
    "out_correct": Statistic(Merge.SAMPLES, _labelled(lambda b: b.top1[1] == b.truth)),
    "out_correct5": Statistic(Merge.SAMPLES, _labelled(Batch.correct5)),
}


class Accumulated(Protocol):
    """What a metric's value is read from: a comparison's merged partials and its settings."""

    stream: Stream
    confident_margin: float


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name in the reports, which way passes a gate, its unit, the output kinds it is measured for, what it needs (labels;
    ``kernel_path``: the figure ``value`` taken on the comparison of an int8 file's second kernel path with its
    first, so int8 files only), the partials it streams (each merged across shards as :data:`PARTIALS` says) and
    its value from them (None: not measurable on this data)."""

    label: str  # how the reports name it (the HTML's per-artifact table, the Markdown's per-kind lines)
    higher_is_better: bool
    unit: Unit
    kinds: frozenset[OutputKind]
    partials: tuple[str, ...]
    value: Callable[[Accumulated], float | None]
    needs_labels: bool = False
    kernel_path: bool = False
    # A share of independent samples: its (successes, samples) from the same partials (None: not measurable), so a
    # gate on it can say how sure it is (edgeship.numerics.decide_rate). None for figures that are not such a share
    counts: Callable[[Accumulated], tuple[int, int] | None] | None = None


CLASSES, ALL_KINDS = frozenset(k for k in OutputKind if k.is_classification), frozenset(OutputKind)
_MULTILABEL, _EMBEDDING = frozenset({OutputKind.MULTILABEL}), frozenset({OutputKind.EMBEDDING})
_REGRESSION, _SEGMENTATION = frozenset({OutputKind.REGRESSION}), frozenset({OutputKind.SEGMENTATION})


def _mean(name: str) -> Callable[[Accumulated], float | None]:
    return lambda c: float(np.mean(c.stream.values(name))) if c.stream.has(name) else None


def _share(count: str, total: str) -> Callable[[Accumulated], float | None]:
    return lambda c: c.stream.n(count) / c.stream.n(total)


def _hits(name: str) -> Callable[[Accumulated], tuple[int, int] | None]:
    """(samples whose per-sample boolean ``name`` is true, samples): a share of independent samples as counts."""
    def counts(c: Accumulated) -> tuple[int, int] | None:
        hits = c.stream.values(name).astype(bool)
        return (int(hits.sum()), len(hits)) if len(hits) else None
    return counts


def _confident_flip_counts(c: Accumulated) -> tuple[int, int] | None:
    # flips among the confident samples only: the samples this share is taken over
    margin, agree = c.stream.values("margin"), c.stream.values("agree").astype(bool)
    sure = margin >= c.confident_margin
    return (int((~agree[sure]).sum()), int(sure.sum())) if sure.any() else None


def _sqnr(c: Accumulated) -> float | None:
    return sqnr_from_powers(c.stream.total("signal"), c.stream.total("noise"))


def _confident_flips(c: Accumulated) -> float | None:
    margin, agree = c.stream.values("margin"), c.stream.values("agree").astype(bool)
    sure = margin >= c.confident_margin
    return float(np.mean(~agree[sure])) if sure.any() else None


def _accuracy_drop(c: Accumulated) -> float | None:
    # from the counts, not the difference of two rounded shares: 280/300 vs 277/300 is exactly 3/300
    if not c.stream.has("out_correct"):
        return None
    out_hits = c.stream.values("out_correct").astype(bool)
    ref_hits = int(c.stream.values("ref_correct").astype(bool).sum())
    return (ref_hits - int(out_hits.sum())) / len(out_hits)


def _map(name: str) -> Callable[[Accumulated], float | None]:
    return lambda c: c.stream.histograms[name].mean_average_precision() if name in c.stream.histograms else None


def _map_drop(c: Accumulated) -> float | None:
    ref_map, out_map = _map("ref_ap")(c), _map("out_ap")(c)
    return ref_map - out_map if ref_map is not None and out_map is not None else None


def relative_error(max_abs: float, ref_min: float, ref_max: float) -> float:
    """``max_abs`` over the reference's range ``ref_max - ref_min``; 0 for no error, inf for an error on a constant
    reference (the one rule :data:`Metric.MAX_RELATIVE_ERROR` and the export's float check share)."""
    span = ref_max - ref_min
    if max_abs == 0:
        return 0.0
    return max_abs / span if span > 0 else float("inf")


def _relative_error(c: Accumulated) -> float | None:
    if not c.stream.has("ref_max"):
        return None
    return relative_error(float(np.max(c.stream.values("max_abs"))), float(np.min(c.stream.values("ref_min"))),
                          float(np.max(c.stream.values("ref_max"))))


def overlap(a: np.ndarray, b: np.ndarray, classes: int,
            valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) pixel counts (N, classes) of two class maps ``a``, ``b`` (N, pixels) of class indices,
    over the pixels ``valid`` marks (all when None)."""
    k = np.arange(classes)
    ak, bk = a[:, :, None] == k, b[:, :, None] == k
    if valid is not None:
        ak, bk = ak & valid[:, :, None], bk & valid[:, :, None]
    return (ak & bk).sum(axis=1), (ak | bk).sum(axis=1)


def class_ious(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """IoU per class from intersection and union pixel counts (classes,), NaN for a class neither map uses."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _ious(c: Accumulated, prefix: str = "class") -> np.ndarray | None:
    """The IoU of each class some map uses, from the ``{prefix}_inter`` / ``{prefix}_union`` partials summed over
    the data (None: not streamed)."""
    if not c.stream.has(f"{prefix}_inter"):
        return None
    ious = class_ious(c.stream.values(f"{prefix}_inter").sum(axis=0), c.stream.values(f"{prefix}_union").sum(axis=0))
    return ious[~np.isnan(ious)]


def _mean_iou(c: Accumulated) -> float | None:
    ious = _ious(c)
    return float(np.mean(ious)) if ious is not None and len(ious) else None


def _class_iou_min(c: Accumulated) -> float | None:
    ious = _ious(c)
    return float(np.min(ious)) if ious is not None and len(ious) else None


def _truth_miou(which: str) -> Callable[[Accumulated], float | None]:
    def value(c: Accumulated) -> float | None:
        ious = _ious(c, f"{which}_truth")
        return float(np.mean(ious)) if ious is not None and len(ious) else None
    return value


def _truth_miou_drop(c: Accumulated) -> float | None:
    ref, out = _truth_miou("ref")(c), _truth_miou("out")(c)
    return ref - out if ref is not None and out is not None else None


def _neighbours(c: Accumulated) -> float | None:
    if not c.stream.has("ref_emb"):
        return None
    return nearest_neighbour_agreement(c.stream.values("ref_emb")[:MAX_NEIGHBOUR_SAMPLES],
                                       c.stream.values("out_emb")[:MAX_NEIGHBOUR_SAMPLES])


def _neighbour_counts(c: Accumulated) -> tuple[int, int] | None:
    # over the samples it uses (the first MAX_NEIGHBOUR_SAMPLES). Each sample's answer depends on the others'
    # embeddings, but whether *its* nearest neighbour changed is one yes/no per sample: counted as such
    share = _neighbours(c)
    if share is None:
        return None
    n = min(len(c.stream.values("ref_emb")), MAX_NEIGHBOUR_SAMPLES)
    return round(share * n), n


_F, _HIGH, _LOW = Unit.FRACTION, True, False
#: The metrics, in report order (``report.json``'s ``metrics`` keys; :class:`edgeship.validate.results.Metrics`).
#: A new metric is a member of :class:`Metric` and its line here; its gate is a line of the policy.
REGISTRY: dict[Metric, MetricSpec] = {
    Metric.MAX_ABS_ERROR: MetricSpec(
        "max abs error", _LOW, Unit.OUTPUT, ALL_KINDS, ("max_abs",),
        lambda c: float(np.max(c.stream.values("max_abs")))),
    Metric.MEAN_ABS_ERROR: MetricSpec(
        "mean abs error", _LOW, Unit.OUTPUT, ALL_KINDS, ("sum_abs", "values"),
        lambda c: c.stream.total("sum_abs") / c.stream.n("values")),
    Metric.COSINE: MetricSpec(
        "cosine", _HIGH, Unit.COSINE, ALL_KINDS, ("cos",), _mean("cos")),
    Metric.SQNR_DB: MetricSpec(
        "SQNR", _HIGH, Unit.DB, ALL_KINDS, ("signal", "noise"), _sqnr),
    Metric.TOP1_AGREEMENT: MetricSpec(
        "top-1 agreement", _HIGH, _F, CLASSES, ("agree",), _mean("agree"), counts=_hits("agree")),
    Metric.TOP5_OVERLAP: MetricSpec(
        "top-5 overlap", _HIGH, _F, CLASSES, ("top5",), _mean("top5")),
    Metric.ACCURACY_TOP1: MetricSpec(
        "accuracy top-1", _HIGH, _F, CLASSES, ("out_correct",), _mean("out_correct"),
        needs_labels=True, counts=_hits("out_correct")),
    Metric.ACCURACY_TOP5: MetricSpec(
        "accuracy top-5", _HIGH, _F, CLASSES, ("out_correct5",), _mean("out_correct5"),
        needs_labels=True, counts=_hits("out_correct5")),
    # A difference of two paired shares of the same samples, not one binomial share: no counts
    Metric.ACCURACY_TOP1_DROP: MetricSpec(
        "accuracy top-1 drop", _LOW, _F, CLASSES, ("out_correct", "ref_correct"), _accuracy_drop,
        needs_labels=True),
    # A share of output values, many per sample and correlated within one (the same image's logits): no counts
    Metric.EQUAL_VALUES: MetricSpec(
        "equal values", _HIGH, _F, ALL_KINDS, ("equal", "values"), _share("equal", "values")),
    Metric.CONFIDENT_FLIPS: MetricSpec(
        "confident flips", _LOW, _F, CLASSES, ("margin", "agree"), _confident_flips,
        counts=_confident_flip_counts),
    Metric.KERNEL_PATH_TOP1_AGREEMENT: MetricSpec(
        "kernel paths: top-1 agreement", _HIGH, _F, CLASSES, ("agree",), _mean("agree"), kernel_path=True,
        counts=_hits("agree")),
    Metric.KERNEL_PATH_EQUAL_VALUES: MetricSpec(
        "kernel paths: equal values", _HIGH, _F, ALL_KINDS, ("equal", "values"),
        _share("equal", "values"), kernel_path=True),
    Metric.KERNEL_PATH_SQNR_DB: MetricSpec(
        "kernel paths: SQNR", _HIGH, Unit.DB, ALL_KINDS, ("signal", "noise"), _sqnr, kernel_path=True),
    # (sample, label) decisions, many per sample and correlated within one: no counts
    Metric.LABEL_AGREEMENT: MetricSpec(
        "label agreement", _HIGH, _F, _MULTILABEL, ("decisions_equal", "decisions"),
        _share("decisions_equal", "decisions")),
    Metric.MEAN_AVERAGE_PRECISION: MetricSpec(
        "mAP", _HIGH, _F, _MULTILABEL, ("out_ap",), _map("out_ap"),
        needs_labels=True),
    Metric.MEAN_AVERAGE_PRECISION_DROP: MetricSpec(
        "mAP drop", _LOW, _F, _MULTILABEL, ("ref_ap", "out_ap"), _map_drop,
        needs_labels=True),
    Metric.COSINE_MIN: MetricSpec(
        "lowest cosine", _HIGH, Unit.COSINE, _EMBEDDING | _REGRESSION | _SEGMENTATION, ("cos",),
        lambda c: float(np.min(c.stream.values("cos")))),
    Metric.NEIGHBOUR_AGREEMENT: MetricSpec(
        "nearest-neighbour agreement", _HIGH, _F, _EMBEDDING, ("ref_emb", "out_emb"), _neighbours,
        counts=_neighbour_counts),
    Metric.MAX_RELATIVE_ERROR: MetricSpec(
        "max error / range", _LOW, Unit.OUTPUT, _REGRESSION, ("max_abs", "ref_min", "ref_max"), _relative_error),
    # pixels, many per sample and correlated within one: no counts
    Metric.PIXEL_AGREEMENT: MetricSpec(
        "pixel agreement", _HIGH, _F, _SEGMENTATION, ("pixels_equal", "pixels"), _share("pixels_equal", "pixels")),
    Metric.MEAN_IOU: MetricSpec(
        "mIoU (vs reference)", _HIGH, _F, _SEGMENTATION, ("class_inter", "class_union"), _mean_iou),
    Metric.CLASS_IOU_MIN: MetricSpec(
        "lowest class IoU", _HIGH, _F, _SEGMENTATION, ("class_inter", "class_union"), _class_iou_min),
    Metric.MEAN_IOU_TRUTH: MetricSpec(
        "mIoU (ground truth)", _HIGH, _F, _SEGMENTATION, ("out_truth_inter", "out_truth_union"), _truth_miou("out"),
        needs_labels=True),
    Metric.MEAN_IOU_TRUTH_DROP: MetricSpec(
        "mIoU drop (ground truth)", _LOW, _F, _SEGMENTATION,
        ("ref_truth_inter", "ref_truth_union", "out_truth_inter", "out_truth_union"), _truth_miou_drop,
        needs_labels=True),
}


def _check_registry() -> None:
    """Every metric declared once, reading partials that exist: a half-wired metric fails at import (a bug)."""
    missing = [str(m) for m in Metric if m not in REGISTRY]
    unknown = sorted({p for s in REGISTRY.values() for p in s.partials} - set(PARTIALS))
    if missing or unknown:
        raise RuntimeError(f"metric registry: no declaration for {missing}, unknown partials {unknown}")


_check_registry()


def metrics_of(kind: OutputKind | str, kernel_path: bool = False) -> tuple[Metric, ...]:
    """The metrics measured for ``kind`` (on the artifact's own outputs, or on its second kernel path's)."""
    kind = OutputKind(kind)
    return tuple(m for m, s in REGISTRY.items() if kind in s.kinds and s.kernel_path == kernel_path)


def partials_of(kind: OutputKind | str) -> tuple[str, ...]:
    """The partials a comparison of ``kind`` streams: those its metrics read (both comparisons of a file: its
    own and its second kernel path's), in :data:`PARTIALS` order."""
    kind = OutputKind(kind)
    wanted = {p for s in REGISTRY.values() if kind in s.kinds for p in s.partials}
    return tuple(p for p in PARTIALS if p in wanted)
