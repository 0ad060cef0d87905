"""The one comparison loop: every artifact against the reference, batch by batch, whatever its runtime.

The comparator never knows which runtime produced an output. Outputs are first aligned to the reference's label
order through the artifact's *own* label list (what a client would show), so a label file in the wrong order
shows up as disagreement, not as a silent pass. Only per-sample summaries are kept, so memory does not grow with
the number of classes times the number of samples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from edgeship.errors import UserError
from edgeship.types import OutputKind
from edgeship.validate import metrics as m
from edgeship.validate.results import Flip, Metrics

MAX_FLIPS = 1000
MAX_THUMBNAILS = 24
MAX_SAMPLE_ERRORS = 2000


def label_permutation(reference: list[str], artifact: list[str] | None) -> np.ndarray | None:
    """Column order that maps the artifact's outputs onto the reference's labels (None: same order)."""
    if artifact is None or list(artifact) == list(reference):
        return None
    if len(artifact) != len(reference) or sorted(artifact) != sorted(reference) or len(set(artifact)) != len(artifact):
        extra = sorted(set(artifact) - set(reference))[:3]
        raise UserError(f"the artifact's {len(artifact)} labels differ from the reference's {len(reference)}"
                        + (f" (e.g. {extra})" if extra else ""))
    where = {label: i for i, label in enumerate(artifact)}
    return np.array([where[label] for label in reference])


@dataclass
class Comparison:
    """Accumulates one artifact's agreement with the reference over the batches.

    ``probabilities``: whether the reference's outputs are probabilities (else logits, softmaxed for the margin);
    ``margin_bins`` and ``confident_margin``: the policy's ``[confidence]`` (:func:`metrics.flips_by_margin`).

    ``kind`` (the output kind) picks the metrics (:data:`metrics.KIND_METRICS`): probabilities and logits are
    compared class by class (top-1, top-5, accuracy, flips); multi-label scores by their decisions at
    ``threshold`` and mean average precision; embeddings by cosine similarity and nearest-neighbour agreement.
    Error, SQNR and cosine figures are kept for every kind. Everything but the nearest-neighbour agreement (which
    keeps the first :data:`metrics.MAX_NEIGHBOUR_SAMPLES` embeddings) is a sum, a count, a min or a histogram.

    Mergeable: its state is a :class:`metrics.Stream` plus the recorded flips, so comparisons of consecutive shards
    of a data set, merged in order (:meth:`merge`), give exactly the figures of one comparison over the whole set
    (shards must start on a batch boundary of the single stream; ``edgeship.validate.executors`` makes them so)."""

    labels: list[str]
    permutation: np.ndarray | None = None
    record_flips: bool = True
    probabilities: bool = False
    margin_bins: tuple[float, ...] = m.MARGIN_BINS
    confident_margin: float = m.CONFIDENT_MARGIN
    kind: OutputKind = OutputKind.LOGITS
    threshold: float = m.LABEL_THRESHOLD
    stream: m.Stream = field(default_factory=m.Stream)
    # multi-label with labels: score histograms of the reference and the artifact (mergeable: sums)
    ref_ap: m.PrecisionHistogram | None = None
    out_ap: m.PrecisionHistogram | None = None
    flips: list[Flip] = field(default_factory=list)

    def update(self, ref: np.ndarray, out: np.ndarray, images: np.ndarray, truth: np.ndarray | None,
               sources: list[str], offset: int | np.ndarray) -> None:
        """``offset``: the index in the whole set of the batch's first sample, or (n,) the index of each sample."""
        if self.permutation is not None:
            out = out[:, self.permutation]
        if out.shape != ref.shape:
            raise UserError(f"the artifact answers with shape {out.shape[1:]}, the reference with {ref.shape[1:]}")
        s = self.stream
        err = np.abs(out.astype(np.float64) - ref)
        s.extend("max_abs", err.max(axis=1))
        s.add("sum_abs", float(err.sum()))
        s.count("values", err.size)
        s.count("equal", int(np.count_nonzero(err == 0)))
        s.add("signal", float(np.sum(ref.astype(np.float64) ** 2)))
        s.add("noise", float(np.sum(err**2)))
        s.extend("cos", m.per_sample_cosine(ref, out))
        s.count("samples", len(ref))
        kind = OutputKind(self.kind)
        if kind is OutputKind.MULTILABEL:
            equal, total = m.label_decisions(ref, out, self.threshold)
            s.count("decisions_equal", equal)
            s.count("decisions", total)
            if truth is not None:
                if self.ref_ap is None:
                    self.ref_ap, self.out_ap = m.PrecisionHistogram(ref.shape[1]), m.PrecisionHistogram(ref.shape[1])
                self.ref_ap.add(ref, truth)
                self.out_ap.add(out, truth)  # type: ignore[union-attr]
            return
        if kind is OutputKind.EMBEDDING:  # the first MAX_NEIGHBOUR_SAMPLES (merged shards are cut to them too)
            take = min(len(ref), m.MAX_NEIGHBOUR_SAMPLES - s.n("kept_emb"))
            if take > 0:
                s.extend("ref_emb", np.asarray(ref[:take], np.float32))
                s.extend("out_emb", np.asarray(out[:take], np.float32))
                s.count("kept_emb", take)
            return
        s.extend("top5", m.per_sample_top5_overlap(ref, out))
        r1, o1 = ref.argmax(1), out.argmax(1)
        s.extend("agree", r1 == o1)
        margin = m.top1_margin(ref, self.probabilities)
        s.extend("margin", margin)
        if truth is not None:
            s.extend("ref_correct", r1 == truth)
            s.extend("out_correct", o1 == truth)
            k = min(5, out.shape[1])
            s.extend("out_correct5", (np.argsort(-out, axis=1, kind="stable")[:, :k] == truth[:, None]).any(axis=1))
        for i in np.flatnonzero(r1 != o1) if self.record_flips else ():
            if len(self.flips) >= MAX_FLIPS:
                break
            self.flips.append(Flip(
                index=int(offset[i]) if isinstance(offset, np.ndarray) else offset + int(i), source=sources[i],
                reference=self.labels[r1[i]], artifact=self.labels[o1[i]],
                truth=None if truth is None else self.labels[int(truth[i])], margin=float(margin[i]),
                thumbnail_png=_png(images[i]) if len(self.flips) < MAX_THUMBNAILS else None,
            ))

    def merge(self, other: "Comparison") -> "Comparison":
        """Append ``other`` (the next shard's comparison) to this one; flips beyond MAX_FLIPS are dropped and
        thumbnails kept for the first MAX_THUMBNAILS only, as one comparison over both would have recorded them.
        (Each shard recorded thumbnails for its own first flips, so the merged first MAX_THUMBNAILS all have one.)"""
        self.stream.merge(other.stream)
        if other.ref_ap is not None:
            if self.ref_ap is None:
                self.ref_ap, self.out_ap = other.ref_ap, other.out_ap
            else:
                self.ref_ap.merge(other.ref_ap)
                self.out_ap.merge(other.out_ap)  # type: ignore[union-attr, arg-type]
        self.flips = (self.flips + other.flips)[:MAX_FLIPS]
        for f in self.flips[MAX_THUMBNAILS:]:
            f.thumbnail_png = None
        return self

    def metrics(self) -> Metrics:
        s = self.stream
        if not s.n("samples"):
            return Metrics()
        mean = lambda name: float(np.mean(s.values(name)))  # noqa: E731
        result = Metrics(
            max_abs_error=float(np.max(s.values("max_abs"))),
            mean_abs_error=s.total("sum_abs") / s.n("values"),
            cosine=mean("cos"),
            sqnr_db=m.sqnr_from_powers(s.total("signal"), s.total("noise")),
            equal_values=s.n("equal") / s.n("values"),
        )
        kind = OutputKind(self.kind)
        if kind is OutputKind.MULTILABEL:
            result.label_agreement = s.n("decisions_equal") / s.n("decisions")
            if self.ref_ap is not None and self.out_ap is not None:
                ref_map, out_map = self.ref_ap.mean_average_precision(), self.out_ap.mean_average_precision()
                result.mean_average_precision = out_map
                if ref_map is not None and out_map is not None:
                    result.mean_average_precision_drop = ref_map - out_map
            return result
        if kind is OutputKind.EMBEDDING:
            result.cosine_min = float(np.min(s.values("cos")))
            if s.has("ref_emb"):
                keep = m.MAX_NEIGHBOUR_SAMPLES
                result.neighbour_agreement = m.nearest_neighbour_agreement(s.values("ref_emb")[:keep],
                                                                           s.values("out_emb")[:keep])
            return result
        result.top1_agreement = mean("agree")
        result.top5_overlap = mean("top5")
        margin, agree = s.values("margin"), s.values("agree").astype(bool)
        sure = margin >= self.confident_margin
        result.confident_flips = float(np.mean(~agree[sure])) if sure.any() else None
        if s.has("out_correct"):
            result.accuracy_top1 = mean("out_correct")
            result.accuracy_top5 = mean("out_correct5")
            # from the counts, not the difference of two rounded shares: 280/300 vs 277/300 is exactly 3/300
            out_hits = s.values("out_correct").astype(bool)
            ref_hits = int(s.values("ref_correct").astype(bool).sum())
            result.accuracy_top1_drop = (ref_hits - int(out_hits.sum())) / len(out_hits)
        return result

    def flips_by_margin(self) -> list[dict[str, float | int]]:
        """Samples and flips per bin of the reference's top-1 margin (:func:`metrics.flips_by_margin`)."""
        if not self.stream.has("agree"):
            return []
        return m.flips_by_margin(self.stream.values("margin"), self.stream.values("agree").astype(bool),
                                 self.margin_bins)

    def sample_errors(self) -> list[float]:
        """Per-sample max abs error, evenly thinned to at most MAX_SAMPLE_ERRORS, for the distribution plot."""
        errs = self.stream.values("max_abs")
        if not len(errs):
            return []
        if len(errs) > MAX_SAMPLE_ERRORS:
            errs = errs[np.linspace(0, len(errs) - 1, MAX_SAMPLE_ERRORS).astype(int)]
        return [float(e) for e in errs]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if image.dtype != np.uint8:  # float pixels: shown rounded
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
