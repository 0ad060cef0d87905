"""Static portability check of an int8 file: can any known CPU kernel path saturate on it?

An int8 convolution or matrix product multiplies 8-bit activations by 8-bit weights and sums the products in an
int32 accumulator. Some kernels first add *two* products in 16 bits: on x86 without VNNI, ONNX Runtime's (MLAS)
uint8 x int8 GEMM multiplies with ``VPMADDUBSW``, which adds each pair of u8 x s8 products with signed 16-bit
saturation; XNNPACK's int8 kernels for ARM NEON without dot-product instructions (``SMULL`` + ``SMLAL``) add two
s8 x s8 products in a 16-bit lane. Where such a pair can leave [-32768, 32767], the kernel computes a different
number than the file describes, on that CPU only (measured: the demo's former u8s8 ONNX equalled LiteRT on 1.8 %
of output values on an AVX2-only EPYC, on 100 % on an AVX-512 VNNI machine).

The check needs no data: from each layer's stored weights and its input's quantised value range (the full range
of the input's 8-bit type: every stored value can occur), it bounds every pair sum each kernel path can form, and
the int32 accumulator (K raw products of the largest magnitude plus the bias: conservative, since kernels that
wrap make intermediate overflow harmless, but VNNI's VPDPBUSDS saturates). The pair bound is taken over *any* two weights of one output channel (the two largest
products of one sign), so it holds whatever order a kernel packs the reduction axis in.

Given a 1x1 conv with uint8 input (0..255) and one output channel's int8 weights ``[127, 90, -3, ...]``:
VPMADDUBSW can pair 255*127 + 255*90 = 55335 > 32767: this layer can saturate on x86 AVX2 without VNNI. The same
weights stored as uint8 ``w + 128`` with zero point 128 (U8U8) run through kernels that widen both operands to 16
bits before multiplying (x86 ``VPMADDWD``; ARM ``UXTL`` + ``UMLAL`` into 32 bits): no pair can saturate, on any
ISA. Kernel facts and their sources: :data:`KERNEL_PATHS`. The same U8U8 re-encoding is ONNX Runtime's own remedy
(its docs' "U8U8 format"; the ``session.x64quantprecision`` option applies it at session creation, but a file
must not depend on its clients setting options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeship.errors import ConversionError

__all__ = ["KERNEL_PATHS", "KernelPath", "Layer", "PortabilityReport", "check_layers", "check_onnx", "check_tflite",
           "ensure_portable", "portable_onnx", "weights_as_u8u8"]

INT16_MAX, INT16_MIN = 32767, -32768
INT32_MAX = 2**31 - 1
_RANGES = {"u8": (0, 255), "s8": (-128, 127)}


@dataclass(frozen=True)
class KernelPath:
    """One family of CPU kernels that runs 8-bit products: which runtime, on which instruction set, for which
    operand types (``operands``: activation type + weight type, e.g. ``"u8s8"``), with which instruction, and
    whether two products are added in 16 bits before the int32 accumulator (``pairs_16bit``: saturating, like
    VPMADDUBSW, or wrapping, like SMLAL: wrong either way). ``activation_range``: the raw values the kernel
    multiplies when it shifts them first (ARM's uint8 x int8 kernels flip activations to ``a - 128``)."""

    runtime: str
    isa: str
    operands: str
    instruction: str
    pairs_16bit: bool
    source: str
    activation_range: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.isa} {self.operands} ({self.instruction})"


_MLAS = "onnxruntime/core/mlas/lib"
_ORT_DOC = ("onnxruntime.ai/docs/performance/model-optimizations/quantization.html: 'ONNX Runtime uses the "
            "VPMADDUBSW instruction for U8S8 ... might suffer from saturation issues ... try reduce_range or the "
            "U8U8 format which doesn't have saturation issues'")
_XNN = "XNNPACK src/qs8-gemm, src/qs8-igemm, src/qs8-dwconv"

#: The kernel paths an int8 ONNX (ONNX Runtime CPU, MLAS) or int8 TFLite (LiteRT: XNNPACK; ruy without it) can
#: take, per ISA, read in the runtimes' sources (ORT main, XNNPACK 75db3c09, ruy 2af8886; 2026-11-29). The
#: ``pairs_16bit`` ones are what the check bounds; the others are bounded by the int32 accumulator only.
KERNEL_PATHS: tuple[KernelPath, ...] = (
    KernelPath("onnxruntime", "x86 AVX2 / AVX-512 without VNNI (and SSE4.1 Windows builds)", "u8s8",
               "VPMADDUBSW", True,
               f"{_MLAS}/x86_64/QgemmU8S8KernelAvx2.S, ConvSymKernelAvx2.S (QGEMM and the symmetric conv "
               f"path); {_ORT_DOC}"),
    KernelPath("onnxruntime", "x86 AVX-VNNI / AVX-512 VNNI / AMX", "u8s8", "VPDPBUSDS / TDPBUSD into int32", False,
               f"{_MLAS}/x86_64/QgemmU8S8KernelAvx512Vnni.S, qgemm_kernel_amx.cpp"),
    KernelPath("onnxruntime", "x86 (every ISA)", "u8u8", "PMADDWD / VPMADDWD on zero-extended 16-bit operands",
               False, f"{_MLAS}/qgemm_kernel_avx2.cpp, x86_64/QgemmU8U8KernelAvx2.S, qgemm_kernel_sse.cpp"),
    KernelPath("onnxruntime", "arm64 NEON without dot-product", "u8s8", "SMULL+SMLAL: two products in 16 bits",
               True, f"{_MLAS}/aarch64/QgemmS8S8KernelNeon.S, ConvSymU8KernelNeon.S (activations flipped to "
               "a - 128); wraps only on (-128)*(-128) + (-128)*(-128)", activation_range=(-128, 127)),
    KernelPath("onnxruntime", "arm64 NEON without dot-product", "u8u8", "UXTL+UMLAL, 16x16 -> 32 bits", False,
               f"{_MLAS}/aarch64/QgemmU8X8KernelNeon.S"),
    KernelPath("onnxruntime", "arm64 dot-product / i8mm", "u8s8", "UDOT / USMMLA into int32", False,
               f"{_MLAS}/qgemm_kernel_udot.cpp, qgemm_kernel_ummla.cpp"),
    KernelPath("onnxruntime", "arm64 dot-product / i8mm", "u8u8", "UDOT / UMMLA into int32", False,
               f"{_MLAS}/qgemm_kernel_udot.cpp, qgemm_kernel_ummla.cpp"),
    KernelPath("litert", "x86 SSE4.1 / AVX2 / AVX-512 without VNNI", "s8s8",
               "VPMADDWD on sign-extended 16-bit operands", False, f"{_XNN} (*-avx2-*, *-avx512skx-*)"),
    KernelPath("litert", "x86 AVX-VNNI / AVX-512 VNNI / AMX", "s8s8", "VPDPBUSD / TDPBSSD into int32", False,
               f"{_XNN} (*-avxvnni-*, *-avx512vnni-*, *-amx-*)"),
    KernelPath("litert", "arm64 NEON without dot-product", "s8s8", "SMULL+SMLAL: two products in 16 bits", True,
               f"{_XNN} (*-neon-mlal-*, *-neonv8-mla8-*); ruy (LiteRT without XNNPACK) kernel_arm64.cc, "
               "validate.h: 'safe except in the bad case -128*-128 + -128*-128'; TFLite's int8 spec keeps weights "
               "in [-127, 127]"),
    KernelPath("litert", "arm64 dot-product / i8mm", "s8s8", "SDOT / SMMLA into int32", False,
               f"{_XNN} (*-neondot-*, *-neoni8mm-*)"),
)


@dataclass(frozen=True)
class Layer:
    """One int8 product layer as stored: ``weights`` (channels, K) raw stored values (int8 or uint8),
    ``activation`` its input's 8-bit type ("u8" or "s8"), ``weight_type`` ("u8" or "s8"), ``bias`` the largest
    magnitude of its int32 bias (0 without one)."""

    name: str
    weights: np.ndarray
    activation: str
    weight_type: str
    bias: int = 0


@dataclass(frozen=True)
class PathVerdict:
    path: KernelPath
    safe: bool
    worst: int  # the worst-case pair sum (16-bit paths) or accumulator magnitude (int32 paths), raw units
    limit: int
    layer: str | None  # the layer holding the worst case

    def to_dict(self) -> dict[str, Any]:
        return {"kernel_path": self.path.name, "safe": self.safe, "worst_case": self.worst, "limit": self.limit,
                "layer": self.layer, "source": self.path.source}


@dataclass
class PortabilityReport:
    """Per applicable kernel path, whether it can saturate on this file's layers."""

    runtime: str
    operands: list[str]
    verdicts: list[PathVerdict] = field(default_factory=list)
    layers: int = 0

    @property
    def safe(self) -> bool:
        return all(v.safe for v in self.verdicts)

    @property
    def unsafe(self) -> list[PathVerdict]:
        return [v for v in self.verdicts if not v.safe]

    def to_dict(self) -> dict[str, Any]:
        """What the recipe records: ``{"safe", "runtime", "operands", "layers", "paths": [...]}``."""
        return {"safe": self.safe, "runtime": self.runtime, "operands": self.operands, "layers": self.layers,
                "paths": [v.to_dict() for v in self.verdicts]}


def _pair_extremes(layer: Layer, activations: tuple[int, int]) -> tuple[int, int]:
    """(most positive, most negative) sum of two products a1*w1 + a2*w2 of one output channel, over every
    activation value in ``activations``; K == 1 channels have no pair."""
    lo, hi = activations
    w = layer.weights.astype(np.int64)
    if w.shape[1] < 2:
        return 0, 0
    prod_hi = np.maximum(w * lo, w * hi)  # the largest product each weight can make
    prod_lo = np.minimum(w * lo, w * hi)
    top2 = -np.partition(-prod_hi, 1, axis=1)[:, :2]
    bot2 = np.partition(prod_lo, 1, axis=1)[:, :2]
    pos = np.maximum(top2, 0).sum(axis=1)  # a pair of one positive and one negative product is smaller
    neg = np.minimum(bot2, 0).sum(axis=1)
    return int(pos.max()), int(neg.min())


def check_layers(layers: list[Layer], runtime: str) -> PortabilityReport:
    """Check ``layers`` against every kernel path of ``runtime`` whose operand types they use."""
    operands = sorted({f"{lay.activation}{lay.weight_type}" for lay in layers})
    report = PortabilityReport(runtime, operands, layers=len(layers))
    for path in KERNEL_PATHS:
        if path.runtime != runtime or path.operands not in operands:
            continue
        mine = [lay for lay in layers if f"{lay.activation}{lay.weight_type}" == path.operands]
        worst, where, limit = 0, None, INT16_MAX if path.pairs_16bit else INT32_MAX
        for lay in mine:
            if path.pairs_16bit:
                pos, neg = _pair_extremes(lay, path.activation_range or _RANGES[lay.activation])
                value = max(pos, -neg - 1)  # -32768 itself fits
            else:  # the int32 accumulator: K products of the largest magnitude, plus the bias
                lo, hi = _RANGES[lay.activation]
                value = int(lay.weights.shape[1] * np.abs(lay.weights.astype(np.int64)).max(initial=0)
                            * max(abs(lo), abs(hi))) + lay.bias
            if value > worst:
                worst, where = value, lay.name
        report.verdicts.append(PathVerdict(path, worst <= limit, worst, limit, where))
    return report


def ensure_portable(report: PortabilityReport, what: str) -> None:
    """Raise :class:`ConversionError` (one line naming the layer and the kernel path) unless ``report`` is safe."""
    if report.safe:
        return
    v = report.unsafe[0]
    where = "16-bit pair sums" if v.path.pairs_16bit else "the int32 accumulator"
    raise ConversionError(f"{what}: layer '{v.layer}' can overflow {where} on {v.path.name} (worst case {v.worst} > "
                          f"{v.limit}); edgeship does not write a file that answers differently on some CPUs")


# -- reading the layers of a file ----------------------------------------------------------------------------------


def check_onnx(model: Any) -> PortabilityReport:
    """The report for an int8 QDQ ONNX (``ModelProto``, bytes or path) on ONNX Runtime's CPU kernel paths.

    Product layers: Conv, Gemm and MatMul nodes whose weights come through a DequantizeLinear of an 8-bit
    initializer and whose input through a DequantizeLinear of an 8-bit tensor (what ORT fuses into QLinearConv,
    QGemm, QLinearMatMul). Depthwise convolutions count too (conservative: a kernel may run them as a GEMM)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, bytes, bytearray)) or hasattr(model, "__fspath__"):
        model = onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray)) else onnx.load(str(model))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    kinds = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "s8", np.dtype(np.int32): "s32"}

    def dq_source(name: str) -> tuple[str, str | None] | None:
        """(quantised tensor, its 8-bit type) behind a DequantizeLinear output, else None."""
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
            return None
        return node.input[0], kinds.get(numpy_helper.to_array(inits[node.input[2]]).dtype)

    layers = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        x, w = dq_source(node.input[0]), dq_source(node.input[1])
        if x is None or w is None or w[0] not in inits or x[1] not in ("u8", "s8") or w[1] not in ("u8", "s8"):
            continue
        weights = numpy_helper.to_array(inits[w[0]])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            weights = weights.reshape(weights.shape[0], -1)
        elif node.op_type == "Gemm" and attrs.get("transB", 0):
            pass  # (N, K) already
        else:
            weights = weights.T  # (K, N) -> (N, K)
        bias = dq_source(node.input[2]) if len(node.input) > 2 else None
        b = numpy_helper.to_array(inits[bias[0]]) if bias is not None and bias[0] in inits else np.zeros(0)
        layers.append(Layer(node.name or node.output[0], np.ascontiguousarray(weights), x[1], w[1],
                            int(np.abs(b.astype(np.int64)).max(initial=0))))
    return check_layers(layers, "onnxruntime")


def weights_as_u8u8(model: Any) -> int:
    """Re-encode, in place, every int8 weight of a product layer (Conv/Gemm/MatMul weight behind a
    DequantizeLinear) as uint8 ``w + 128`` with zero point ``zp + 128``: the same real numbers, since
    ``(w + 128) - (zp + 128) == w - zp``, run by ORT's uint8 x uint8 kernels. Returns how many were re-encoded.

    Given ``W(int8 [127, -3]) -> DequantizeLinear(scale s, zp 0) -> Conv``; Result: ``W(uint8 [255, 125]) ->
    DequantizeLinear(scale s, zp 128) -> Conv``. An initializer or zero point that something else reads too is
    left alone (re-encoding it would change that reader)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    count = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        w_name, zp_name = dq.input[0], dq.input[2]
        if w_name not in inits or zp_name not in inits or len(readers.get(node.input[1], [])) != 1:
            continue
        if any(len(readers[name]) != 1 for name in (w_name, zp_name)):
            continue
        w, zp = numpy_helper.to_array(inits[w_name]), numpy_helper.to_array(inits[zp_name])
        if w.dtype != np.int8 or zp.dtype != np.int8:
            continue
        inits[w_name].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), w_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), zp_name))
        count += 1
    return count


def portable_onnx(model: Any, what: str) -> PortabilityReport:
    """Make an int8 QDQ ``ModelProto`` safe on every ORT kernel path, in place, and return its report: kept as it
    is when no path can saturate (e.g. 7-bit ``reduce_range`` weights), re-encoded U8U8 otherwise
    (:func:`weights_as_u8u8`). Raises :class:`ConversionError` naming the layer if it still is not safe."""
    report = check_onnx(model)
    if not report.safe and weights_as_u8u8(model):
        report = check_onnx(model)
    ensure_portable(report, what)
    return report


def check_tflite(tflite: bytes) -> PortabilityReport:
    """The report for an int8 .tflite on LiteRT's XNNPACK kernel paths (CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED with constant 8-bit weights)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = {schema.TensorType.INT8: ("s8", np.int8), schema.TensorType.UINT8: ("u8", np.uint8)}
    layers = []
    for sg in model.subgraphs:
        for op in sg.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
                continue
            x, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
            if x.type not in kinds or w.type not in kinds:
                continue
            buf = model.buffers[w.buffer].data if w.buffer < len(model.buffers) else None
            if buf is None or len(buf) == 0:
                continue
            values = np.frombuffer(bytes(buf), dtype=kinds[w.type][1]).reshape([int(d) for d in w.shape])
            if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C] -> (C, kh*kw)
                values = values.reshape(-1, values.shape[-1]).T
            else:  # [O, kh, kw, I] / [N, K] -> (O, K)
                values = values.reshape(values.shape[0], -1)
            name = sg.tensors[op.outputs[0]].name
            bias = 0
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                b = sg.tensors[op.inputs[2]]
                data = model.buffers[b.buffer].data if b.buffer < len(model.buffers) else None
                if b.type == schema.TensorType.INT32 and data is not None and len(data):
                    bias = int(np.abs(np.frombuffer(bytes(data), np.int32).astype(np.int64)).max(initial=0))
            layers.append(Layer(name.decode() if isinstance(name, bytes) else str(name),
                                np.ascontiguousarray(values), kinds[x.type][0], kinds[w.type][0], bias))
    return check_layers(layers, "litert")
