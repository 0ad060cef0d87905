"""Is a SavedModel's graph safe to run? Read from ``saved_model.pb`` with protobuf, before TensorFlow loads anything.

A graph op is code too: ``tf.io.write_file`` in a serving function writes wherever the model's author chose as soon
as the model runs, and a resource initialiser runs at load time. Without ``--trust-model`` every op the SavedModel
can run must be in :data:`PURE_OPS`, an allow-list of tensor ops that read their inputs and return tensors (math,
NN, array, image resizing, variable reads, functional control flow whose bodies are checked too). Anything else —
file I/O (``WriteFile``, ``ReadFile``, ``SaveV2`` outside the checkpoint saver), Python callbacks (``PyFunc``,
``EagerPyFunc``), printing (``PrintV2``), string, queue, dataset, system and unknown ops — is refused, naming the op
and the function holding it.

What is checked: every node of every meta graph and every function of its library, transitively, except the
checkpoint saver that ``tf.saved_model.save`` writes (the nodes behind ``saver_def`` and the functions only they
call), which may also use :data:`CHECKPOINT_OPS` (TensorFlow restores variables with its own code, not the file's;
the saver is what saves them). A function the saver shares with anything else is held to :data:`PURE_OPS`.

Sources: the op names are TensorFlow's registered op names (``tf.raw_ops``); the SavedModel layout is
``tensorflow/core/protobuf/saved_model.proto``, ``meta_graph.proto`` (``saver_def``) and ``function.proto``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from edgeship.errors import UserError

#: Ops that compute tensors from tensors and nothing else (no files, no Python, no printing, no system state).
PURE_OPS = frozenset("""
Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan Atan2 Atanh AvgPool AvgPool3D
BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchNormWithGlobalNormalization BatchToSpaceND BiasAdd BiasAddV1 Bitcast
BroadcastArgs BroadcastGradientArgs BroadcastTo Cast Ceil CheckNumerics ClipByValue Complex ComplexAbs Concat ConcatV2
ConcatOffset Const Conv2D Conv3D Conv2DBackpropInput Conv3DBackpropInputV2 Cos Cosh Cumsum Cumprod DepthToSpace
DepthwiseConv2dNative Dequantize Diag DiagPart DivNoNan Einsum Elu Empty EnsureShape Equal Erf Erfc Exp ExpandDims
Expm1 FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel Fill Floor FloorDiv FloorMod
FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D Gather GatherNd GatherV2 Gelu
Greater GreaterEqual Identity IdentityN Imag InvertPermutation IsFinite IsInf IsNan L2Loss LeakyRelu Less LessEqual
Lgamma LinSpace Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr LRN MatMul MatrixBandPart MatrixDiag MatrixDiagV3
MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2 MaxPoolWithArgmax Maximum Mean Min Minimum MirrorPad Mod Mul MulNoNan
Neg NextAfter NoOp NotEqual OneHot OnesLike Pack Pad PadV2 Placeholder PlaceholderWithDefault Pow PreventGradient Prod
QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeV2 Range Rank Real RealDiv Reciprocal
Relu Relu6 Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor Reverse ReverseV2 Rint Round Rsqrt
ScatterNd Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size Slice Snapshot Softmax Softplus Softsign
SpaceToBatchND SpaceToDepth Split SplitV Sqrt Square SquaredDifference Squeeze StopGradient StridedSlice Sub Sum Tan
Tanh TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv TruncateMod Unique Unpack Where Xdivy Xlog1py Xlogy ZerosLike
VarHandleOp ReadVariableOp AssignVariableOp VarIsInitializedOp DisableCopyOnRead ResourceGather DestroyResourceOp
PartitionedCall StatefulPartitionedCall If StatelessIf While StatelessWhile Case StatelessCase
""".split())

#: Ops the checkpoint saver of ``tf.saved_model.save`` uses (only allowed in the saver's own functions).
CHECKPOINT_OPS = frozenset("""
SaveV2 SaveSlices RestoreV2 RestoreSlice MergeV2Checkpoints ShardedFilename ShardedFilespec StringJoin
StaticRegexFullMatch RegexFullMatch
""".split())


def check_saved_model_graph(path: Path) -> None:
    """Refuse (:class:`UserError`) a SavedModel directory whose graph holds an op outside the allow-list, naming the
    op and where it is. Reads ``path/saved_model.pb``; runs nothing."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except DecodeError:
        raise UserError(f"{path}/saved_model.pb is not a SavedModel protobuf: re-save the model") from None
    for mg in sm.meta_graphs:
        bad = list(_unsafe_ops(mg))
        if bad:
            ops = sorted({op for op, _ in bad})
            where = bad[0][1]
            raise UserError(
                f"SavedModel {Path(path).name} runs ops outside edgeship's allow-list of pure tensor ops "
                f"({', '.join(ops[:6])}{' ...' if len(ops) > 6 else ''}; {bad[0][0]} in {where}): they could touch "
                "files or run code; refusing to load it. Pass --trust-model if you trust where this file comes from")


def _unsafe_ops(mg) -> Iterable[tuple[str, str]]:
    """(op, where) for every op of meta graph ``mg`` outside what its place allows."""
    library = {f.signature.name: f for f in mg.graph_def.library.function}
    nodes = {n.name: n for n in mg.graph_def.node}
    saver = mg.saver_def
    roots = [t.split(":")[0].lstrip("^") for t in (saver.save_tensor_name, saver.restore_op_name,
                                                    saver.filename_tensor_name) if t]
    saver_nodes = _backward(roots, nodes)
    saver_funcs = _closure(_called(nodes[n] for n in saver_nodes), library)
    other_roots = _called(n for name, n in nodes.items() if name not in saver_nodes)
    other_roots |= {name for name in library if name not in saver_funcs}
    other_funcs = _closure(other_roots, library)
    checkpoint_only = saver_funcs - other_funcs
    for name, node in nodes.items():
        allowed = PURE_OPS | (CHECKPOINT_OPS if name in saver_nodes else frozenset())
        if node.op not in allowed and node.op not in library:
            yield node.op, f"node '{name}'"
    for fname, func in library.items():
        allowed = PURE_OPS | (CHECKPOINT_OPS if fname in checkpoint_only else frozenset())
        for node in func.node_def:
            if node.op not in allowed and node.op not in library:
                yield node.op, f"function '{fname}'"


def _reach(roots: Iterable[str], edges: Any) -> set[str]:
    """Every name reachable from ``roots`` (included) through ``edges(name)`` (an iterable of names)."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(edges(name))
    return seen


def _backward(roots: list[str], nodes: dict) -> set[str]:
    """Names of the outer-graph nodes ``roots`` depend on (data and control inputs), roots included."""
    inputs = lambda name: (s for s in (i.lstrip("^").split(":")[0] for i in nodes[name].input) if s in nodes)  # noqa: E731
    return _reach([r for r in roots if r in nodes], inputs)


def _called(nodes: Iterable) -> set[str]:
    """Functions the nodes call: through func attributes (``f``, ``then_branch``, ``body``...) or as their op."""
    out: set[str] = set()
    for node in nodes:
        out.add(node.op)
        for attr in node.attr.values():
            if attr.func.name:
                out.add(attr.func.name)
            out.update(f.name for f in attr.list.func)
    return out


def _closure(roots: set[str], library: dict) -> set[str]:
    """The library functions ``roots`` call, directly or not, roots included."""
    return _reach([r for r in roots if r in library],
                  lambda name: (f for f in _called(library[name].node_def) if f in library))
