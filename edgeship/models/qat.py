"""Is a model quantisation-aware trained? Its graph holds TensorFlow's fake-quantisation ops.

QAT (tensorflow-model-optimization's ``quantize_model``, or any ``tf.quantization.fake_quant_*`` call) trains a
model through ``FakeQuantWithMinMaxVars`` / ``...PerChannel`` / ``...Args`` ops: each rounds a tensor to the 256
levels of its trained [min, max] range and hands the float value on. What that means for each stage:

- export: the TFLite converter turns every FakeQuant into a QUANTIZE/DEQUANTIZE pair in the "fp32" file, tf2onnx
  into QuantizeLinear/DequantizeLinear, coremltools into clip/sub/real_div/round/mul/add. The float files compute
  the same quantised function as the model, but a quantised function is a staircase: a float sum that lands on the
  other side of a rounding boundary (another accumulation order, another kernel) moves by one whole step, and the
  steps add up layer after layer. Measured on the test suite's QAT MobileNetV2 (118 FakeQuant ops, 64 calibration
  digits): the fp32 TFLite differs from TensorFlow by whole steps of the logits' own fake-quant (0-3 steps,
  max 0.273, 36.6 dB) on every kernel path (XNNPACK, the built-in kernels, the reference kernels; each also
  differs from the others), while each QUANTIZE matches TensorFlow's FakeQuant on the same input to 1e-5 but for
  a handful of elements exactly on a boundary. So a QAT model's float files are judged by the policy's
  ``[qat.PRECISION]`` tables (edgeship/validate/policy.toml), not the 1e-4 float gate;
- quantise: the converter takes the trained FakeQuant ranges for the int8 file (edgeship's own range search and
  fixed ReLU6 ranges have nothing to set where a FakeQuant already fixed one), and the recipe says so.

Where it is read: a SavedModel's ``saved_model.pb`` (protobuf, nothing run: :func:`saved_model_fake_quants`); a
Keras model's layer classes and, for layers that are not Keras' own, its traced graph (:func:`keras_fake_quants`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

FAKE_QUANT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel", "FakeQuantWithMinMaxArgs")


def saved_model_fake_quants(path: Path) -> Counter[str]:
    """{FakeQuant op type: count} of a SavedModel directory, read from ``saved_model.pb``. A SavedModel stores one
    forward pass several times (the signature's function, the module's ``__call__`` traces...): the count is that
    of the library function holding the most (or of the top-level graph, for a TF1 frozen export)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except Exception:  # noqa: BLE001 - the loader says what is wrong with the file
        return Counter()
    best: Counter[str] = Counter()
    for mg in sm.meta_graphs:
        graphs = [mg.graph_def.node] + [f.node_def for f in mg.graph_def.library.function]
        for nodes in graphs:
            found = Counter(n.op for n in nodes if n.op in FAKE_QUANT_OPS)
            if sum(found.values()) > sum(best.values()):
                best = found
    return best


def keras_fake_quants(km: Any) -> Counter[str]:
    """{FakeQuant op type: count} of a Keras model: none when every layer is one of Keras' own (they hold no
    FakeQuant); otherwise the ops of the model's traced inference graph (nested functions included)."""
    from edgeship.models.loading import _is_keras_class, walk_layers

    layers = list(walk_layers(km))
    if all(_is_keras_class(type(layer).__name__) and type(layer).__module__.startswith("keras")
           for layer in layers):
        return Counter()
    try:
        from edgeship._tf import silenced, tf

        t = tf()
        spec = t.TensorSpec((1, *km.input_shape[1:]), t.float32)
        with silenced():
            graph = t.function(lambda x: km(x, training=False)).get_concrete_function(spec).graph
        defs = graph.as_graph_def()
    except Exception:  # noqa: BLE001 - a model that cannot be traced here is not called QAT
        return Counter()
    nodes = list(defs.node) + [n for f in defs.library.function for n in f.node_def]
    return Counter(n.op for n in nodes if n.op in FAKE_QUANT_OPS)


def describe(found: Counter[str]) -> str:
    """``"118 FakeQuant ops: 65 FakeQuantWithMinMaxVars, 53 FakeQuantWithMinMaxVarsPerChannel"``."""
    total = sum(found.values())
    parts = ", ".join(f"{n} {op}" for op, n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} FakeQuant op{'s' if total != 1 else ''}: {parts}"
