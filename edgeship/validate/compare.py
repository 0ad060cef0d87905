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
    keeps the first :data:`metrics.MAX_NEIGHBOUR_SAMPLES` embeddings) is a sum, a count, a min or a histogram."""

    labels: list[str]
    permutation: np.ndarray | None = None
    record_flips: bool = True
    probabilities: bool = False
    margin_bins: tuple[float, ...] = m.MARGIN_BINS
    confident_margin: float = m.CONFIDENT_MARGIN
    kind: OutputKind = OutputKind.LOGITS
    threshold: float = m.LABEL_THRESHOLD
    _samples: int = 0
    _decisions_equal: int = 0
    _decisions: int = 0
    _ref_ap: m.PrecisionHistogram | None = None
    _out_ap: m.PrecisionHistogram | None = None
    _ref_emb: list[np.ndarray] = field(default_factory=list)
    _out_emb: list[np.ndarray] = field(default_factory=list)
    _kept_emb: int = 0
    _equal: int = 0
    _max_abs: list[np.ndarray] = field(default_factory=list)
    _sum_abs: float = 0.0
    _values: int = 0
    _signal: float = 0.0
    _noise: float = 0.0
    _cos: list[np.ndarray] = field(default_factory=list)
    _top5: list[np.ndarray] = field(default_factory=list)
    _agree: list[np.ndarray] = field(default_factory=list)
    _out_correct: list[np.ndarray] = field(default_factory=list)
    _out_correct5: list[np.ndarray] = field(default_factory=list)
    _ref_correct: list[np.ndarray] = field(default_factory=list)
    _margin: list[np.ndarray] = field(default_factory=list)
    flips: list[Flip] = field(default_factory=list)

    def update(self, ref: np.ndarray, out: np.ndarray, images: np.ndarray, truth: np.ndarray | None,
               sources: list[str], offset: int) -> None:
        if self.permutation is not None:
            out = out[:, self.permutation]
        if out.shape != ref.shape:
            raise UserError(f"the artifact answers with shape {out.shape[1:]}, the reference with {ref.shape[1:]}")
        err = np.abs(out.astype(np.float64) - ref)
        self._max_abs.append(err.max(axis=1))
        self._sum_abs += float(err.sum())
        self._values += err.size
        self._equal += int(np.count_nonzero(err == 0))
        self._signal += float(np.sum(ref.astype(np.float64) ** 2))
        self._noise += float(np.sum(err**2))
        self._cos.append(m.per_sample_cosine(ref, out))
        self._samples += len(ref)
        kind = OutputKind(self.kind)
        if kind is OutputKind.MULTILABEL:
            equal, total = m.label_decisions(ref, out, self.threshold)
            self._decisions_equal += equal
            self._decisions += total
            if truth is not None:
                if self._ref_ap is None:
                    self._ref_ap, self._out_ap = m.PrecisionHistogram(ref.shape[1]), m.PrecisionHistogram(ref.shape[1])
                self._ref_ap.add(ref, truth)
                self._out_ap.add(out, truth)  # type: ignore[union-attr]
            return
        if kind is OutputKind.EMBEDDING:
            take = min(len(ref), m.MAX_NEIGHBOUR_SAMPLES - self._kept_emb)
            if take > 0:
                self._ref_emb.append(np.asarray(ref[:take], np.float32))
                self._out_emb.append(np.asarray(out[:take], np.float32))
                self._kept_emb += take
            return
        self._top5.append(m.per_sample_top5_overlap(ref, out))
        r1, o1 = ref.argmax(1), out.argmax(1)
        self._agree.append(r1 == o1)
        margin = m.top1_margin(ref, self.probabilities)
        self._margin.append(margin)
        if truth is not None:
            self._ref_correct.append(r1 == truth)
            self._out_correct.append(o1 == truth)
            k = min(5, out.shape[1])
            self._out_correct5.append((np.argsort(-out, axis=1, kind="stable")[:, :k] == truth[:, None]).any(axis=1))
        for i in np.flatnonzero(r1 != o1) if self.record_flips else ():
            if len(self.flips) >= MAX_FLIPS:
                break
            self.flips.append(Flip(
                index=offset + int(i), source=sources[i], reference=self.labels[r1[i]], artifact=self.labels[o1[i]],
                truth=None if truth is None else self.labels[int(truth[i])], margin=float(margin[i]),
                thumbnail_png=_png(images[i]) if len(self.flips) < MAX_THUMBNAILS else None,
            ))

    def metrics(self) -> Metrics:
        if not self._samples:
            return Metrics()
        mean = lambda parts: float(np.mean(np.concatenate(parts)))  # noqa: E731
        result = Metrics(
            max_abs_error=float(np.max(np.concatenate(self._max_abs))),
            mean_abs_error=self._sum_abs / self._values,
            cosine=mean(self._cos),
            sqnr_db=m.sqnr_from_powers(self._signal, self._noise),
            equal_values=self._equal / self._values,
        )
        kind = OutputKind(self.kind)
        if kind is OutputKind.MULTILABEL:
            result.label_agreement = self._decisions_equal / self._decisions
            if self._ref_ap is not None and self._out_ap is not None:
                ref_map, out_map = self._ref_ap.mean_average_precision(), self._out_ap.mean_average_precision()
                result.mean_average_precision = out_map
                if ref_map is not None and out_map is not None:
                    result.mean_average_precision_drop = ref_map - out_map
            return result
        if kind is OutputKind.EMBEDDING:
            result.cosine_min = float(np.min(np.concatenate(self._cos)))
            if self._ref_emb:
                result.neighbour_agreement = m.nearest_neighbour_agreement(np.concatenate(self._ref_emb),
                                                                           np.concatenate(self._out_emb))
            return result
        result.top1_agreement = mean(self._agree)
        result.top5_overlap = mean(self._top5)
        margin, agree = np.concatenate(self._margin), np.concatenate(self._agree)
        sure = margin >= self.confident_margin
        result.confident_flips = float(np.mean(~agree[sure])) if sure.any() else None
        if self._out_correct:
            result.accuracy_top1 = mean(self._out_correct)
            result.accuracy_top5 = mean(self._out_correct5)
            # from the counts, not the difference of two rounded shares: 280/300 vs 277/300 is exactly 3/300
            n = sum(len(c) for c in self._out_correct)
            ref_hits = int(np.concatenate(self._ref_correct).sum())
            result.accuracy_top1_drop = (ref_hits - int(np.concatenate(self._out_correct).sum())) / n
        return result

    def flips_by_margin(self) -> list[dict[str, float | int]]:
        """Samples and flips per bin of the reference's top-1 margin (:func:`metrics.flips_by_margin`)."""
        if not self._agree:
            return []
        return m.flips_by_margin(np.concatenate(self._margin), np.concatenate(self._agree), self.margin_bins)

    def sample_errors(self) -> list[float]:
        """Per-sample max abs error, evenly thinned to at most MAX_SAMPLE_ERRORS, for the distribution plot."""
        if not self._max_abs:
            return []
        errs = np.concatenate(self._max_abs)
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
