"""Normalisation inside the model's graph: find it, say what it is, and keep the client from applying it twice.

A model can normalise its own input: a ``Rescaling`` or ``Normalization`` layer (V3's ``include_preprocessing`` is
a ``Rescaling(1/127.5, -1)``), or ``keras.applications.*.preprocess_input`` called on the input tensor (V1/V2:
``x / 127.5 - 1``; caffe style, e.g. ResNet50/VGG: RGB->BGR, then minus the ImageNet mean per channel; torch
style: ``(x/255 - mean) / std``). The same model reaches edgeship as ``.keras``, ``.h5`` or a SavedModel
(``model.export()``), where layers are gone and only TF ops remain, so the detection reads the **graph**, not the
layer list: the model is traced to one TF graph (variables frozen to constants and nested functions inlined by
``convert_variables_to_constants_v2``, so a SavedModel wrapped in ``TFSMLayer`` is read like a Keras model), the
first convolution reachable from the input is found, and the sub-graph from the input to that convolution's data
input is evaluated on constant images. When that sub-graph is, per pixel, ``y[c] = a[c] * x[p(c)] + b[c]``
with ``p`` the identity or the channel reversal, the model normalises inside with ``mean = -b/a``, ``std = 1/a``
(0-255 pixel units) in ``p``'s channel order. The layer list (cheap) decides whether there is anything to read:
a Keras model whose first convolution comes straight after its input layer (and padding or augmentation layers,
which are the identity at inference) is not traced.

Issue 13 (edgeship): the tutorial pattern ``preprocess_input`` inside the model was exported with ``(x - 127.5) /
127.5`` declared on top, so every file normalised twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.models.spec import Preprocessing
from edgeship.types import ColorOrder

# Layers that are the identity at inference or do no arithmetic on pixel values: the layer-list check passes over
# them (augmentation layers: keras.layers.Random*, whose inference call returns the input).
_PASS_THROUGH = ("InputLayer", "ZeroPadding2D", "Cropping2D", "Dropout", "SpatialDropout2D", "GaussianNoise",
                 "GaussianDropout", "ActivityRegularization")
_CONV_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Conv1D", "Conv3D")
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "Conv3D", "Conv", "Conv2DBackpropInput")
# Tolerances of the affine fit, relative to the values' size (float32 arithmetic on 0-255 inputs)
_RTOL = 1e-4


@dataclass(frozen=True)
class InGraphNormalisation:
    """What the model does to its input before the first convolution, as a :class:`Preprocessing` (0-255 pixels,
    ``color`` = BGR when the graph reverses the channels), and a human description of where it was found."""

    preprocessing: Preprocessing
    found: str  # e.g. "ops RealDiv, Sub before conv 'conv2d' (x / 127.5 - 1)"

    def describe(self) -> str:
        return f"{self.found}: {formula(self.preprocessing)}"


def formula(pre: Preprocessing) -> str:
    """A short human form of ``pre`` ('(x - 127.5) / 127.5', 'BGR, x - [103.9, 116.8, 123.7]'...)."""
    def one(values: tuple[float, ...]) -> str:
        vals = [float(f"{v:.4g}") for v in values]
        return f"{vals[0]:g}" if max(vals) - min(vals) < 1e-9 else "[" + ", ".join(f"{v:g}" for v in vals) + "]"

    parts = []
    mean, std = one(pre.mean), one(pre.std)
    text = "x" if mean == "0" else f"(x - {mean})"
    if std != "1":
        text = f"{text} / {std}"
    elif text.startswith("("):
        text = text[1:-1]
    if pre.color is ColorOrder.BGR:
        parts.append("RGB->BGR")
    parts.append(text)
    return ", then ".join(parts)


def is_identity(pre: Preprocessing) -> bool:
    return (pre.color is ColorOrder.RGB and all(abs(m) < 1e-6 for m in pre.mean)
            and all(abs(s - 1.0) < 1e-6 for s in pre.std))


def detect(km: Any, *, saved_model: bool = False) -> InGraphNormalisation | None:
    """The normalisation ``km`` applies to its input before its first convolution, or None when it applies none
    (or something that is not a per-channel affine map, which edgeship does not claim to understand).

    ``km``: a Keras model with one (N, H, W, 3) float input. ``saved_model``: it wraps a SavedModel (always traced).
    Raises nothing: a model that cannot be traced is reported as applying nothing."""
    if not saved_model:
        before = _layers_before_first_conv(km)
        if before is not None and all(type(l).__name__ in _PASS_THROUGH or type(l).__name__.startswith("Random")
                                      for l in before):
            return None
    try:
        probe = _pre_conv_function(km)
        if probe is None:
            return None
        fn, ops, conv_name = probe
        pre = _fit_affine(fn, tuple(km.input_shape[1:]))
    except Exception:  # tracing is best effort; the model itself is loaded and checked elsewhere
        return None
    if pre is None or is_identity(pre):
        return None
    names = _layer_names(km)
    where = names[0] if names else "TF ops " + "/".join(ops[:5]) + ("..." if len(ops) > 5 else "")
    return InGraphNormalisation(pre, f"{where} before the first convolution ('{conv_name}')")


def _operations(km: Any) -> Any:
    """Every leaf operation in model order, nested models flattened. Keras 3 functional models keep the ops
    called on tensors (``preprocess_input``'s TrueDivide, Subtract, GetItem...) in ``operations``, not ``layers``."""
    for op in getattr(km, "operations", None) or getattr(km, "layers", []):
        if hasattr(op, "layers"):
            yield from _operations(op)
        else:
            yield op


def _layers_before_first_conv(km: Any) -> list[Any] | None:
    before: list[Any] = []
    for layer in _operations(km):
        name = type(layer).__name__
        if name in _CONV_LAYERS:
            return before
        if name == "TFSMLayer":
            return None
        before.append(layer)
    return None


def _layer_names(km: Any) -> list[str]:
    """Keras layers that hold the normalisation, for the message (none for a SavedModel)."""
    before = _layers_before_first_conv(km) or []
    kinds = [type(l).__name__ for l in before
             if type(l).__name__ not in _PASS_THROUGH and not type(l).__name__.startswith("Random")]
    kinds = list(dict.fromkeys(kinds))
    return [f"{'/'.join(kinds[:4])}{'...' if len(kinds) > 4 else ''} layers"] if kinds else []


def _pre_conv_function(km: Any) -> tuple[Any, list[str], str] | None:
    """(f, op types, conv name): f maps a (1, H, W, 3) float32 batch to the first convolution's data input."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from edgeship._tf import silenced, tf

    t = tf()
    shape = (1, *km.input_shape[1:])
    with silenced():
        concrete = t.function(lambda x: km(x, training=False)).get_concrete_function(t.TensorSpec(shape, t.float32))
        frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    consumers: dict[str, list[Any]] = {}
    for n in graph_def.node:
        for inp in n.input:
            consumers.setdefault(inp.lstrip("^").split(":")[0], []).append(n)
    placeholders = [n for n in graph_def.node if n.op == "Placeholder"]
    if len(placeholders) != 1:
        return None
    # breadth first from the input: the first convolution reached, and the op types on the way
    seen, queue, ops, conv = {placeholders[0].name}, [placeholders[0]], [], None
    while queue and conv is None:
        node = queue.pop(0)
        for c in consumers.get(node.name, []):
            if c.name in seen:
                continue
            seen.add(c.name)
            if c.op in _CONV_OPS:
                conv = c
                break
            if (c.op not in ("Identity", "IdentityN", "NoOp", "Const") and c.op not in ops
                    and "raw_pixels_to_uint8" not in c.name):  # edgeship's own cast for a uint8 input (setups)
                ops.append(c.op)
            queue.append(c)
    if conv is None:
        return None
    data_input = conv.input[0]
    name, _, index = data_input.partition(":")
    tensor_name = f"{name}:{index or 0}"

    def import_graph() -> None:
        t.compat.v1.import_graph_def(graph_def, name="")

    wrapped = t.compat.v1.wrap_function(import_graph, [])
    g = wrapped.graph
    fn = wrapped.prune(g.as_graph_element(placeholders[0].name + ":0"), g.as_graph_element(tensor_name))
    return fn, ops, conv.name.split("/")[-2] if "/" in conv.name else conv.name


def _fit_affine(fn: Any, input_shape: tuple[int, ...]) -> Preprocessing | None:
    """Per pixel ``y[c] = a[c] * x[p(c)] + b[c]`` from constant images; None if the map is not of that form."""
    from edgeship._tf import tf

    t = tf()
    h, w, _ = input_shape

    def run(rgb: tuple[float, float, float]) -> np.ndarray | None:
        x = np.broadcast_to(np.asarray(rgb, np.float32), (1, h, w, 3)).copy()
        y = np.asarray(fn(t.constant(x)))
        if y.ndim != 4 or y.shape[-1] != 3:
            return None
        return y[0, y.shape[1] // 2, y.shape[2] // 2].astype(np.float64)

    b = run((0.0, 0.0, 0.0))
    if b is None:
        return None
    cols = []
    for c in range(3):
        e = [0.0, 0.0, 0.0]
        e[c] = 255.0
        y = run(tuple(e))  # type: ignore[arg-type]
        if y is None:
            return None
        cols.append((y - b) / 255.0)
    a = np.stack(cols, axis=1)  # a[out, in]
    scale = np.abs(a).max()
    if scale == 0:
        return None
    if np.allclose(a, np.diag(np.diag(a)), atol=_RTOL * scale):
        diag, color = np.diag(a), ColorOrder.RGB
    elif np.allclose(a, np.fliplr(np.diag(np.diag(np.fliplr(a)))), atol=_RTOL * scale):
        diag, color = np.diag(np.fliplr(a)), ColorOrder.BGR
    else:
        return None
    if np.any(diag <= 0):
        return None
    # linearity: a mixed image must give a*x + b
    x = np.asarray([37.0, 201.0, 119.0])
    y = run(tuple(x))
    if y is None or not np.allclose(y, a @ x + b, atol=_RTOL * max(1.0, np.abs(a @ x + b).max())):
        return None
    std = 1.0 / diag
    mean = -b * std
    # Preprocessing's mean/std are in the model's channel order: (pixel[p(c)] - mean[c]) / std[c]
    m0, m1, m2 = (_tidy(m) for m in mean)
    s0, s1, s2 = (_tidy(s) for s in std)
    return Preprocessing(mean=(m0, m1, m2), std=(s0, s1, s2), color=color)


def _tidy(v: float) -> float:
    """Round away float32 noise (127.49999 -> 127.5) without moving a real value: 6 significant digits."""
    return float(f"{v:.6g}")
