"""What ONNX Runtime makes of the rewritten graph: the graph it executes, and what is left unfused in it."""

from __future__ import annotations

from typing import Any

FLOAT_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv")


def ort_optimized_graph(model: bytes | str, level: str = "all", threads: int = 1) -> Any:
    """The graph ONNX Runtime (CPU) executes for ``model`` (a path or serialized bytes), as it saves it with
    ``SessionOptions.optimized_model_filepath``. ``level="all"`` is the default session's (it may hold NCHWc and
    com.microsoft ops, valid on this machine only)."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # the "hardware specific optimizations" warning of level "all"
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model if isinstance(model, (bytes, bytearray)) else str(model), opts,
                             providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath).graph


def fusion_report(graph: Any) -> dict[str, Any]:
    """What is left unfused in an ORT-optimised graph: ``op_counts``; ``float_compute`` (float Conv/MatMul/Gemm
    nodes); ``qlinear_conv`` (QLinearConv, plain or NHWC); ``clips``; ``stranded``: Transpose/Clip nodes fed by a
    DequantizeLinear or feeding a QuantizeLinear (they keep an int8 pair from fusing)."""
    from collections import Counter

    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    stranded = []
    for n in graph.node:
        if n.op_type not in ("Transpose", "Clip"):
            continue
        fed_by_dq = bool(n.input) and getattr(producer.get(n.input[0]), "op_type", "") == "DequantizeLinear"
        feeds_q = any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, []))
        if fed_by_dq or feeds_q:
            stranded.append(n.name or n.op_type)
    counts = Counter(n.op_type for n in graph.node)
    return {"op_counts": dict(counts), "float_compute": sum(counts[k] for k in FLOAT_COMPUTE),
            "qlinear_conv": counts["QLinearConv"], "clips": counts["Clip"], "stranded": stranded}
