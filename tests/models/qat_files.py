"""Quantisation-aware trained models made here, without tf_keras or tensorflow-model-optimization (Keras 3 has no
tfmot support): the embedded demo (MobileNetV2 alpha 0.35, 96 px, digits) rewritten the way tfmot's default 8-bit
QAT scheme rewrites a MobileNetV2 and exports it as a SavedModel:

- each BatchNormalization folded into the convolution before it (tfmot's ``Conv2DBatchNormFold``/inference form);
- the folded weights fake-quantised: ``Conv2D`` per output channel, symmetric, narrow range
  (``FakeQuantWithMinMaxVarsPerChannel``), ``DepthwiseConv2D`` and ``Dense`` per tensor (``FakeQuantWithMinMaxVars``), their
  ranges the weights' own min/max (tfmot's ``LastValueQuantizer``);
- the activations fake-quantised where tfmot puts its ``MovingAverageQuantizer``: the model's input, every ReLU6
  output, every projection conv (no activation), every residual Add, the logits; ranges from the demo's calibration
  images (min/max, as a moving average settles to), held in variables as tfmot holds them;
- written with ``tf.saved_model.save`` with a ``serving_default`` signature: the graph has FakeQuantWithMinMaxVars /
  ...PerChannel ops reading ``ReadVariableOp`` ranges, as a tf_keras+tfmot QAT model's export has.

The module takes the demo's preprocessed input (``x / 127.5 - 1``), as the demo model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _fold(km: Any) -> dict[str, dict[str, Any]]:
    """{conv layer name: {"kernel", "bias", "bn"}} with each BatchNormalization folded into the conv before it."""
    folded: dict[str, dict[str, Any]] = {}
    for layer in km.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            w = layer.get_weights()
            folded[layer.name] = {"kernel": np.asarray(w[0], np.float32),
                                  "bias": np.asarray(w[1], np.float32) if len(w) > 1 else None, "bn": None}
    for layer in km.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        producer = layer.input._keras_history.operation
        entry = folded[producer.name]
        gamma, beta, mean, var = (np.asarray(a, np.float32) for a in layer.get_weights())
        scale = gamma / np.sqrt(var + layer.epsilon)
        k = entry["kernel"]
        if type(producer).__name__ == "DepthwiseConv2D":  # (kh, kw, C, 1): the channel is axis 2
            k = k * scale.reshape(1, 1, -1, 1)
        else:
            k = k * scale
        bias = entry["bias"] if entry["bias"] is not None else 0.0
        entry.update(kernel=k.astype(np.float32), bias=((bias - mean) * scale + beta).astype(np.float32),
                     bn=layer.name)
    return folded


def _forward(km: Any, folded: dict[str, dict[str, Any]], fq: Any) -> Any:
    """``f(x)``: the demo's graph with folded convs, ``fq(name, tensor, kind)`` called on every quantised tensor
    (kind "act", "w_channel" or "w_tensor")."""
    import tensorflow as tf

    bn_of = {e["bn"]: name for name, e in folded.items() if e["bn"]}

    def op_fn(layer: Any) -> Any:
        kind = type(layer).__name__
        name = layer.name
        if kind == "InputLayer":
            return lambda x, **kw: x
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            e = folded[name]

            def conv(x: Any, **kw: Any) -> Any:
                if kind == "DepthwiseConv2D":
                    w = fq(f"{name}/kernel", e["kernel"], "w_tensor")
                    y = tf.nn.depthwise_conv2d(x, w, (1, *layer.strides, 1), layer.padding.upper())
                elif kind == "Conv2D":
                    w = fq(f"{name}/kernel", e["kernel"], "w_channel")
                    y = tf.nn.conv2d(x, w, (1, *layer.strides, 1), layer.padding.upper())
                else:  # tfmot quantises a Dense kernel per tensor (and the TFLite converter refuses a
                    # per-channel FakeQuant on a MatMul kernel: "'tfl.transpose' op has mismatched quantized axes")
                    w = fq(f"{name}/kernel", e["kernel"], "w_tensor")
                    y = tf.matmul(x, w)
                if e["bias"] is not None:
                    y = y + e["bias"]
                if name == "Conv_1" or kind == "Dense" or "project" in name:
                    # a conv with no activation after it (projection, logits) is quantised at its output
                    y = fq(f"{name}/out", y, "act")
                return y

            return conv
        if kind == "BatchNormalization":
            return lambda x, **kw: x  # folded
        if kind == "ReLU":
            return lambda x, **kw: fq(f"{name}/out", tf.nn.relu6(x), "act")
        if kind == "Add":
            return lambda *xs, **kw: fq(f"{name}/out", tf.add_n(list(xs[0]) if len(xs) == 1 else list(xs)), "act")
        return lambda *xs, **kw: layer(*xs, **kw)

    def f(x: Any) -> Any:
        x = fq("input/out", x, "act")
        return km._run_through_graph(x, operation_fn=op_fn)  # noqa: SLF001

    return f


def write_qat_saved_model(out: Path, images: np.ndarray, km: Any = None) -> dict[str, Any]:
    """The demo as a QAT SavedModel in ``out``; ``images``: preprocessed calibration inputs (N, 96, 96, 3) the
    activation ranges come from. Returns {"activations": count, "weights": count, "ranges": {name: (lo, hi)}}."""
    import tensorflow as tf

    from edgeship.models.loading import load_model

    km = km or load_model().keras_model
    folded = _fold(km)
    stats: dict[str, list[float]] = {}

    def observe(name: str, t: Any, kind: str) -> Any:
        if kind == "act":
            v = np.asarray(t)
            lo, hi = stats.get(name, [0.0, 0.0])
            stats[name] = [min(lo, float(v.min())), max(hi, float(v.max()))]
        return t

    fwd = _forward(km, folded, observe)
    for i in range(0, len(images), 50):
        fwd(tf.constant(images[i:i + 50], tf.float32))

    class QAT(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="qat_mobilenetv2")
            self.ranges: dict[str, tuple[tf.Variable, tf.Variable]] = {}
            self.kernels: dict[str, tf.Variable] = {}
            for name, e in folded.items():
                self.kernels[name] = tf.Variable(e["kernel"], trainable=False, name=name.replace("/", "_"))

        def fq(self, name: str, t: Any, kind: str) -> Any:
            key = name.replace("/", "_")
            if kind == "act":
                lo, hi = stats[name]
                if key not in self.ranges:
                    self.ranges[key] = (tf.Variable(lo, name=f"{key}_min"), tf.Variable(hi, name=f"{key}_max"))
                mn, mx = self.ranges[key]
                return tf.quantization.fake_quant_with_min_max_vars(t, mn, mx, num_bits=8)
            layer = name.split("/")[0]
            w = self.kernels[layer]
            if kind == "w_tensor":
                a = float(np.abs(folded[layer]["kernel"]).max())
                if key not in self.ranges:
                    self.ranges[key] = (tf.Variable(-a, name=f"{key}_min"), tf.Variable(a, name=f"{key}_max"))
                mn, mx = self.ranges[key]
                return tf.quantization.fake_quant_with_min_max_vars(w, mn, mx, num_bits=8, narrow_range=True)
            k = folded[layer]["kernel"]
            a = np.abs(k.reshape(-1, k.shape[-1])).max(axis=0).astype(np.float32)
            if key not in self.ranges:
                self.ranges[key] = (tf.Variable(-a, name=f"{key}_min"), tf.Variable(a, name=f"{key}_max"))
            mn, mx = self.ranges[key]
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(w, mn, mx, num_bits=8, narrow_range=True)

    module = QAT()
    forward = _forward(km, folded, module.fq)
    h, w, c = km.input_shape[1:]

    @tf.function(input_signature=[tf.TensorSpec((None, h, w, c), tf.float32, name="image")])
    def serve(image: Any) -> Any:
        return {"logits": forward(image)}

    serve.get_concrete_function()  # creates the range variables
    module.serve = serve
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    acts = sum(1 for n in stats)
    return {"activations": acts, "weights": len(folded), "ranges": {k: tuple(v) for k, v in stats.items()}}


def calibration_inputs(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(preprocessed demo calibration images, their labels): the first ``n``."""
    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR
    from edgeship.models.spec import Preprocessing, read_labels

    labels = read_labels(DEMO_DIR / "labels.txt")
    cal = load_image_folder(DEMO_DIR / "calibration", (96, 96), class_names=labels)
    return Preprocessing().apply(cal.images[:n]).astype(np.float32), cal.labels[:n]
