"""Parameters and multiply-adds (MACs) of a model, counted the way the MobileNet papers count them.

Why: users pick a MobileNet variant by its cost, and the figure they compare with is the papers' "Mult-Adds". So we
count exactly what the papers count: one MAC per multiply-add of a convolution, a depthwise convolution or a
fully-connected layer, per image. Bias adds, batch norm, activations (hard-swish's multiplies too), pooling,
residual adds and squeeze-excite's channel scaling are free. A 1x1 convolution applied to a 1x1 map (V1's and V3's
classifiers, SE's FCs) is a fully-connected layer and costs the same.

``count_keras_model`` reads the Keras layer graph (shapes re-derived for the input size actually fed, so a MobileNet
built with ``input_shape=None`` and nested in a 224x224 model is counted at 224). ``count_concrete_function`` counts
a traced TF graph instead, for models that are not Keras layer graphs (a SavedModel behind ``TFSMLayer``).

Checked against the published figures (Keras 3.15.1 ``keras.applications``, ``weights=None``, 1000 classes; "slim" is
the TF-slim checkpoint README, which lists the released models)::

    variant            MACs here   paper / slim           conv+FC weights here   paper / slim
    V1 1.0-224          568.7M     569M / 569M             4.21M                  4.2M / 4.24M
    V1 0.5-160           76.5M      76M / 77M              1.32M                  1.32M / 1.34M
    V2 1.0-224          300.8M     300M / 300M             3.47M                  3.4M / 3.47M
    V2 1.4-224          582.2M     585M / 582M             6.06M                  6.9M / 6.06M
    V2 0.35-224          59.3M      -   / 59M              1.66M                   -   / 1.66M
    V3-Large 1.0-224    216.6M     219M / 217M             5.46M                  5.4M / 5.4M
    V3-Small 1.0-224     56.5M      56M / 66M              2.53M                  2.5M / 2.9M

Keras' V3 builds the paper's head (1x1 conv to 960/576, pool, 1x1 conv to 1280/1024, 1x1 logits), so nothing is
left out; the remaining gaps are between the publications themselves (slim's V3-Small rows, 66M and minimalistic 65M,
sit 10-13M above the paper's 56M and this count's 56.5M / 52.3M; the V2 paper's 6.9M for 1.4 disagrees with slim's
6.06M). ``params`` itself is
``model.count_params()``: it adds batch norm's gamma/beta and moving statistics (V1 +0.04M, V2 +0.07M, V3-Large
+0.05M), which the papers leave out. The tests pin the rule on hand-computed layers.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import re
from typing import Any, Iterable

from edgeship.errors import UserError

KINDS = ("conv", "depthwise", "pointwise", "fc", "other")


@dataclass(frozen=True)
class LayerCount:
    """One layer's share. ``output_shape`` has no batch dimension; ``macs`` is per image."""

    name: str  # nested models: "outer/inner"
    kind: str  # one of KINDS; "other" carries parameters but no MACs (batch norm, embeddings, ...)
    output_shape: tuple[int, ...]
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "macs": self.macs,
        }


@dataclass(frozen=True)
class ModelCounts:
    """Whole-model totals plus the per-layer rows they come from."""

    params: int  # every parameter: trainable + non-trainable (batch norm statistics), i.e. model.count_params()
    trainable_params: int
    macs: int  # sum of the layers' macs, per image
    layers: tuple[LayerCount, ...]  # every layer with params or macs, in graph order

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """JSON-ready; per-layer rows only on request since a MobileNet has ~100 of them."""
        d: dict[str, Any] = {"params": self.params, "trainable_params": self.trainable_params, "macs": self.macs}
        if layers:
            d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


def _size(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


def _unknown_size_error(where: str, shape: Any) -> UserError:
    return UserError(
        f"cannot count multiply-adds: {where} has shape {tuple(shape)} with unknown dimensions; give the model a "
        "fixed input size (build it with input_shape=(224, 224, 3), or pass input_shape= to count_keras_model)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Keras layer graphs


def count_keras_model(model: Any, input_shape: tuple[int, ...] | None = None) -> ModelCounts:
    """Count a built Keras functional or Sequential model, recursing into nested models.

    ``input_shape`` (no batch dimension) overrides a single-input model's declared input, e.g. to count a MobileNet
    built with ``input_shape=None`` at 224x224. Shared layers are counted once per call (MACs) and once in total
    (params).
    """
    keras = _keras()
    graph = _functional_graph(model, model.name)
    specs = list(graph.inputs)
    if input_shape is not None:
        if len(specs) != 1:
            raise UserError(f"input_shape= needs a single-input model; '{model.name}' has {len(specs)} inputs")
        batch = specs[0].shape[0]
        specs = [keras.KerasTensor((batch, *tuple(input_shape)), dtype=specs[0].dtype)]
    rows: list[LayerCount] = []
    _walk(graph, specs, "", rows, {})
    trainable = sum(_size(w.shape) for w in model.trainable_weights)
    return ModelCounts(
        params=int(model.count_params()),
        trainable_params=int(trainable),
        macs=sum(r.macs for r in rows),
        layers=tuple(rows),
    )


def _keras() -> Any:
    from edgeship._tf import keras

    return keras()


def _functional_graph(model: Any, path: str) -> Any:
    """The Functional graph behind a model: itself, or a Sequential's inner one. Subclassed models have none."""
    keras = _keras()
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise UserError(
                f"model '{path}' is a Sequential model without an input shape; start it with keras.Input(shape=...)"
            )
        return graph
    if hasattr(model, "_nodes_by_depth"):
        return model
    raise UserError(
        f"model '{path}' ({type(model).__name__}) is a subclassed model with no layer graph to count; "
        "count a traced graph with count_concrete_function"
    )


def _walk(graph: Any, inputs: list[Any], prefix: str, rows: list[LayerCount], calls: dict[int, int]) -> list[Any]:
    """Run ``graph`` symbolically on ``inputs`` (KerasTensors), appending a row per counted layer call.

    This mirrors Keras' own ``Function._run_through_graph`` (Keras is pinned, see pyproject) so that every node, not
    only a layer's first call, is seen, with the shapes actually fed to it: the recorded shapes are reused when they
    match, otherwise the layer's ``compute_output_spec`` derives them.
    """
    keras = _keras()
    known: dict[int, Any] = {id(x): y for x, y in zip(graph.inputs, inputs)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in known for x in node.input_tensors):
                continue  # not reachable from the inputs (Keras skips these too)
            op = node.operation
            actual_in = [known[id(x)] for x in node.input_tensors]
            name = prefix + op.name
            n = calls.get(id(op), 0)
            calls[id(op)] = n + 1
            if n:
                name += f"#{n + 1}"
            if isinstance(op, keras.Model):
                sub = _functional_graph(op, name)
                outputs = _walk(sub, _flat(actual_in), name + "/", rows, calls)
            else:
                if all(tuple(a.shape) == tuple(x.shape) for a, x in zip(actual_in, node.input_tensors)):
                    outputs = list(node.output_tensors)
                else:
                    args, kwargs = node.arguments.fill_in(known)
                    outputs = _flat(op.compute_output_spec(*args, **kwargs))
                row = _count_layer(op, name, actual_in, outputs, first_call=n == 0)
                if row is not None:
                    rows.extend(row)
            for x, y in zip(node.output_tensors, outputs):
                known[id(x)] = y
    return [known[id(x)] for x in graph.outputs]


def _flat(x: Any) -> list[Any]:
    return list(_keras().tree.flatten(x))


def _count_layer(
    op: Any, name: str, inputs: list[Any], outputs: list[Any], first_call: bool
) -> list[LayerCount] | None:
    """The rows for one call of a (non-model) layer; None when it has neither params nor MACs."""
    keras = _keras()
    L = keras.layers
    is_layer = isinstance(op, keras.layers.Layer)  # graphs also hold bare ops (keras.ops.add) with no weights
    params = int(op.count_params()) if first_call and is_layer and op.built else 0
    out_shape = tuple(outputs[0].shape[1:]) if outputs else ()

    def spatial(shape: tuple[Any, ...]) -> int:
        """Positions a conv kernel is applied at (all dims but batch and channels)."""
        dims = shape[2:] if getattr(op, "data_format", "channels_last") == "channels_first" else shape[1:-1]
        if any(d is None for d in dims):
            raise _unknown_size_error(f"layer '{name}'", shape)
        return _size(dims)

    def row(kind: str, p: int, macs: int, suffix: str = "") -> LayerCount:
        return LayerCount(name + suffix, kind, tuple(int(d) if d is not None else -1 for d in out_shape), p, macs)

    if isinstance(op, (L.SeparableConv1D, L.SeparableConv2D)):
        # Depthwise then pointwise, both at the output resolution (the stride is in the depthwise part).
        pos = spatial(outputs[0].shape)
        dw, pw = tuple(op.depthwise_kernel.shape), tuple(op.pointwise_kernel.shape)
        dw_params = _size(dw) if first_call else 0
        return [
            row("depthwise", dw_params, _size(dw) * pos, "/depthwise"),
            row("pointwise", params - dw_params, _size(pw) * pos, "/pointwise"),
        ]
    if isinstance(op, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        # kernel (*k, Cin, depth_multiplier): Kh*Kw*Cin*mult per output position
        return [row("depthwise", params, _size(op.kernel.shape) * spatial(outputs[0].shape))]
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D)):
        # kernel (*k, Cin/groups, Cout): Kh*Kw*(Cin/groups)*Cout per output position
        kernel = tuple(op.kernel.shape)
        kind = "pointwise" if all(k == 1 for k in kernel[:-2]) else "conv"
        return [row(kind, params, _size(kernel) * spatial(outputs[0].shape))]
    if isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        # every input position multiplies the whole kernel (*k, Cout, Cin)
        return [row("conv", params, _size(op.kernel.shape) * spatial(inputs[0].shape))]
    if isinstance(op, L.Dense):
        # kernel (in, units), applied at every position of the non-batch, non-feature dims
        dims = outputs[0].shape[1:-1]
        if any(d is None for d in dims):
            raise _unknown_size_error(f"layer '{name}'", outputs[0].shape)
        return [row("fc", params, _size(op.kernel.shape) * _size(dims))]
    if is_layer and (type(op).__name__ == "TFSMLayer" or _has_hidden_kernels(op)):
        raise UserError(
            f"cannot count multiply-adds inside layer '{name}' ({type(op).__name__}): edgeship counts Conv, "
            "DepthwiseConv, SeparableConv and Dense layers and nested Keras models; count a traced graph with "
            "count_concrete_function instead"
        )
    if params:
        return [row("other", params, 0)]
    return None


def _has_hidden_kernels(op: Any) -> bool:
    """A layer we do not know that holds a kernel (a custom block, attention, an RNN) would silently count 0 MACs."""
    for w in op.weights:
        leaf = str(getattr(w, "path", None) or getattr(w, "name", "")).split("/")[-1]
        if "kernel" in leaf:
            return True
    return False


# --------------------------------------------------------------------------------------------------------------------
# Traced TF graphs

_CALL_SCOPE = re.compile(r"^(Stateful)?PartitionedCall(_\d+)?$")


def count_concrete_function(fn: Any) -> ModelCounts:
    """Count a traced ``tf.function`` concrete function from its ops' static shapes.

    The function is frozen first (variables to constants, nested function calls inlined), because a SavedModel's
    ops live in nested functions whose own signatures may have an unknown batch size; after inlining every op has
    the shapes of the traced input. Trace with a fully static signature, e.g. ``tf.TensorSpec([1, 224, 224, 3])``;
    counts are divided by that batch size. Counted ops: Conv2D/Conv3D, DepthwiseConv2dNative,
    Conv2DBackpropInput (transposed conv), MatMul, BatchMatMul(V2/V3). Per-op ``params`` is the weight operand
    only (biases and BN are not ops we count) and ``output_shape`` is the op's output without its leading dim (a
    Dense on (H, W, C) is one MatMul of (batch*H*W, C)); the totals come from the function's variables.
    """
    from edgeship._tf import tf

    tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    captured = {id(t) for t in fn.graph.internal_captures}  # variables and closed-over tensors, after the feeds
    feeds = [t for t in fn.inputs if id(t) not in captured]
    if not feeds:
        raise UserError("the traced function has no inputs to count from")
    for t in feeds:
        if not t.shape.is_fully_defined():
            raise _unknown_size_error(f"traced input '{t.name}'", t.shape.as_list())
    batch = int(feeds[0].shape[0]) if feeds[0].shape.rank else 1
    batch = batch or 1

    frozen = convert_variables_to_constants_v2(fn)
    rows: list[LayerCount] = []
    for op in frozen.graph.get_operations():
        counted = _count_tf_op(op)
        if counted is None:
            continue
        kind, macs, params = counted
        out = op.outputs[0].shape
        rows.append(
            LayerCount(
                name=_op_name(op.name),
                kind=kind,
                output_shape=tuple(int(d) for d in out.as_list()[1:]),
                params=params,
                macs=macs // batch,
            )
        )
    variables = {id(v): v for v in fn.variables}.values()
    trainable = {id(v): v for v in fn.trainable_variables}.values()
    return ModelCounts(
        params=sum(_size(v.shape) for v in variables),
        trainable_params=sum(_size(v.shape) for v in trainable),
        macs=sum(r.macs for r in rows),
        layers=tuple(rows),
    )


def _op_name(name: str) -> str:
    return "/".join(part for part in name.split("/") if not _CALL_SCOPE.match(part))


def _count_tf_op(op: Any) -> tuple[str, int, int] | None:
    """(kind, MACs for the whole traced batch, weight params) for the ops that multiply-add; None for the rest."""

    def shape(t: Any) -> list[int]:
        dims = t.shape.as_list() if t.shape.rank is not None else None
        if dims is None or any(d is None for d in dims):
            raise _unknown_size_error(f"op '{op.name}' ({op.type})", dims or ())
        return dims

    def positions(t: Any) -> int:
        """All dims but channels (the batch included; the caller divides by it)."""
        dims = shape(t)
        fmt = op.get_attr("data_format").decode()
        channel_axis = 1 if fmt.startswith("NC") else len(dims) - 1
        return _size(d for i, d in enumerate(dims) if i != channel_axis)

    if op.type in ("Conv2D", "Conv3D", "DepthwiseConv2dNative"):
        f = shape(op.inputs[1])
        macs = _size(f) * positions(op.outputs[0])
        if op.type == "DepthwiseConv2dNative":
            kind = "depthwise"
        else:
            kind = "pointwise" if all(k == 1 for k in f[:-2]) else "conv"
        return kind, macs, _size(f) if _is_weight(op.inputs[1]) else 0
    if op.type == "Conv2DBackpropInput":  # transposed conv: the whole kernel at every input (dy) position
        f = shape(op.inputs[1])
        return "conv", _size(f) * positions(op.inputs[2]), _size(f) if _is_weight(op.inputs[1]) else 0
    if op.type == "MatMul":
        a, b = shape(op.inputs[0]), shape(op.inputs[1])
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        n = b[0] if op.get_attr("transpose_b") else b[1]
        return "fc", m * k * n, _weight_params(op)
    if op.type in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        x = shape(op.inputs[0])
        k = x[-2] if op.get_attr("adj_x") else x[-1]
        return "fc", _size(shape(op.outputs[0])) * k, _weight_params(op)
    return None


def _weight_params(op: Any) -> int:
    for t in (op.inputs[1], op.inputs[0]):
        if _is_weight(t):
            return _size(t.shape.as_list())
    return 0


def _is_weight(t: Any) -> bool:
    """A frozen variable: a Const, possibly behind Identity ops."""
    while t.op.type == "Identity":
        t = t.op.inputs[0]
    return t.op.type == "Const"


def count_model(model: Any) -> ModelCounts:
    """Counts for any model edgeship loads: the Keras layer graph where there is one, the traced TF graph for a
    SavedModel (wrapped in ``TFSMLayer``, whose inside Keras cannot see)."""
    if not any(type(layer).__name__ == "TFSMLayer" for layer in getattr(model, "layers", [])):
        return count_keras_model(model)
    from edgeship._tf import tf

    t = tf()
    spec = t.TensorSpec((1, *model.input_shape[1:]), t.float32)
    return count_concrete_function(t.function(lambda x: model(x, training=False)).get_concrete_function(spec))
