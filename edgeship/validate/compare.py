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
#: A segmentation sample is recorded (as a :class:`Flip`, with its maps drawn) when at least this share of its
#: pixels changed class against the reference's map.
MAP_CHANGE = 0.01
#: One colour per class for the drawn class maps (cycled past ten classes): the ten of matplotlib's "tab10".
_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
                     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


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

    ``kind`` (the output kind) picks the metrics (:data:`metrics.REGISTRY`: each declares the kinds it is measured
    for and the partial statistics it reads): probabilities and logits are compared class by class (top-1, top-5,
    accuracy, flips); multi-label scores by their decisions at ``threshold`` and mean average precision;
    embeddings by cosine similarity and nearest-neighbour agreement. Error, SQNR and cosine figures are kept for
    every kind. Every partial is a sum, a count, per-sample values or a histogram (:data:`metrics.PARTIALS`); the
    nearest-neighbour agreement keeps the first :data:`metrics.MAX_NEIGHBOUR_SAMPLES` embeddings.

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
    map_size: tuple[int, int] | None = None  # (h, w) of a segmentation's class map (ModelSpec.mask_size)
    stream: m.Stream = field(default_factory=m.Stream)
    flips: list[Flip] = field(default_factory=list)

    def update(self, ref: np.ndarray, out: np.ndarray, images: np.ndarray, truth: np.ndarray | None,
               sources: list[str], offset: int | np.ndarray) -> None:
        """``offset``: the index in the whole set of the batch's first sample, or (n,) the index of each sample."""
        if self.permutation is not None:  # the class axis is the last one (of each pixel of a segmentation map)
            out = out.reshape(len(out), -1, len(self.labels))[:, :, self.permutation].reshape(len(out), -1)
        if out.shape != ref.shape:
            raise UserError(f"the artifact answers with shape {out.shape[1:]}, the reference with {ref.shape[1:]}")
        s = self.stream
        batch = m.Batch(ref, out, truth, self.probabilities, self.threshold, classes=len(self.labels))
        s.count("samples", len(ref))
        for name in m.partials_of(self.kind):
            partial = m.PARTIALS[name]
            value = partial.batch(batch)
            if value is None:
                continue
            if partial.first is not None:  # the first samples only (merged shards are cut to them too)
                take = min(len(value), partial.first - s.n(f"{name}.kept"))  # type: ignore[arg-type]
                if take <= 0:
                    continue
                value = value[:take]  # type: ignore[index]
                s.count(f"{name}.kept", take)
            s.record(name, partial.merge, value)
        if self.record_flips and OutputKind(self.kind).is_classification:
            self._record_flips(batch, images, sources, offset)
        elif self.record_flips and OutputKind(self.kind) is OutputKind.SEGMENTATION and self.map_size:
            self._record_map_changes(batch, images, sources, offset)

    def _record_map_changes(self, batch: m.Batch, images: np.ndarray, sources: list[str],
                            offset: int | np.ndarray) -> None:
        """Segmentation: each sample whose class map differs from the reference's on MAP_CHANGE of its pixels or
        more, as a Flip ("class map" -> the share changed), drawn for the first MAX_THUMBNAILS: the image, the
        reference's map and the artifact's over it, the changed pixels in red."""
        ref, out = batch.pixel_classes
        changed = np.mean(ref != out, axis=1)
        size = self.map_size
        assert size is not None  # the caller checked
        for i in np.flatnonzero(changed >= MAP_CHANGE):
            if len(self.flips) >= MAX_FLIPS:
                break
            self.flips.append(Flip(
                index=int(offset[i]) if isinstance(offset, np.ndarray) else offset + int(i), source=sources[i],
                reference="class map", artifact=f"{changed[i]:.1%} of pixels changed class",
                thumbnail_png=(_maps_png(images[i], ref[i], out[i], size)
                               if len(self.flips) < MAX_THUMBNAILS else None),
            ))

    def _record_flips(self, batch: m.Batch, images: np.ndarray, sources: list[str], offset: int | np.ndarray) -> None:
        (r1, o1), truth = batch.top1, batch.truth
        for i in np.flatnonzero(r1 != o1):
            if len(self.flips) >= MAX_FLIPS:
                break
            self.flips.append(Flip(
                index=int(offset[i]) if isinstance(offset, np.ndarray) else offset + int(i), source=sources[i],
                reference=self.labels[r1[i]], artifact=self.labels[o1[i]],
                truth=None if truth is None else self.labels[int(truth[i])], margin=float(batch.margin[i]),
                thumbnail_png=_png(images[i]) if len(self.flips) < MAX_THUMBNAILS else None,
            ))

    def merge(self, other: "Comparison") -> "Comparison":
        """Append ``other`` (the next shard's comparison) to this one; flips beyond MAX_FLIPS are dropped and
        thumbnails kept for the first MAX_THUMBNAILS only, as one comparison over both would have recorded them.
        (Each shard recorded thumbnails for its own first flips, so the merged first MAX_THUMBNAILS all have one.)"""
        self.stream.merge(other.stream)
        self.flips = (self.flips + other.flips)[:MAX_FLIPS]
        for f in self.flips[MAX_THUMBNAILS:]:
            f.thumbnail_png = None
        return self

    def metrics(self, second: "Comparison | None" = None) -> Metrics:
        """The registry's metrics of this comparison's kind; with ``second`` (the comparison of the file's second
        kernel path with its first), the ``kernel_path_*`` metrics too, taken on it."""
        result = Metrics()
        for metric, spec in m.REGISTRY.items():
            source = second if spec.kernel_path else self
            if source is not None and source.stream.n("samples") and OutputKind(self.kind) in spec.kinds:
                setattr(result, metric.value, spec.value(source))
        return result

    def counts(self, second: "Comparison | None" = None) -> dict[str, tuple[int, int]]:
        """(successes, samples) of each metric that is a share of independent samples (the registry's ``counts``),
        on the same comparisons as :meth:`metrics`; a metric not measured here is left out."""
        result = {}
        for metric, spec in m.REGISTRY.items():
            source = second if spec.kernel_path else self
            if (spec.counts is not None and source is not None and source.stream.n("samples")
                    and OutputKind(self.kind) in spec.kinds):
                pair = spec.counts(source)
                if pair is not None:
                    result[metric.value] = pair
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


def _maps_png(image: np.ndarray, ref: np.ndarray, out: np.ndarray, size: tuple[int, int]) -> bytes:
    """One PNG, three panels at the image's size: the image; the reference's class map over it; the artifact's
    class map over it with the pixels whose class changed in red. ``ref``/``out`` (h * w,) class indices."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    h, w = image.shape[:2]

    def up(a: np.ndarray) -> np.ndarray:  # (h*w,) at the map size -> the image's size, nearest
        return np.asarray(Image.fromarray(a.reshape(size).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))

    r, o = up(ref), up(out)
    tint = lambda c: (0.5 * image + 0.5 * _PALETTE[c % len(_PALETTE)]).astype(np.uint8)  # noqa: E731
    changed = tint(o)
    changed[r != o] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([image, tint(r), changed], axis=1)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if image.dtype != np.uint8:  # float pixels: shown rounded
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
