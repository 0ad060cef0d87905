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

Op mapping: CONV_2D/DEPTHWISE_CONV_2D -> DQ,Conv,Q (QLinearConv); ADD -> DQ,Add,Q (QLinearAdd); MEAN over H,W ->
DQ,GlobalAveragePool,Q (QLinearGlobalAveragePool); FULLY_CONNECTED -> DQ,Gemm,Q (QGemm); AVERAGE_POOL_2D,
SOFTMAX, LOGISTIC, MUL, CONCATENATION, HARD_SWISH -> DQ,op,Q; MAX_POOL_2D, RESHAPE, PAD on uint8 directly;
QUANTIZE/DEQUANTIZE at the I/O. A dynamic Reshape's shape computation (SHAPE, STRIDED_SLICE, PACK on int32) is
dropped: the static shapes stand for it. Anything else raises :class:`UnsupportedTFLiteOp`.

Rounding: ORT's QLinearConv/QGemm requantise like XNNPACK (float multiplier input_scale x weight_scale /
output_scale, round half to even), and so do its QLinearAdd and QLinearGlobalAveragePool to within what the demo
can show: 100 % of the demo's held-out output values equal LiteRT's (XNNPACK), as on MobileNet V1 and V3-Small
minimalistic. A float input is quantised as XNNPACK does it (times the reciprocal scale, not divided by the scale:
preprocessed pixels land on rounding ties). Not exact: HARD_SWISH (V3 non-minimalistic) runs DQ, HardSwish, Q in
float, where TFLite has its own int8 kernel (measured: 42 % of outputs equal on a random-init V3-Small).

A layer the quantiser left in float (``keep_float``: DEQUANTIZE, float op, QUANTIZE in the .tflite) stays float,
fed by a DequantizeLinear with a per-channel scale: with a scalar one ORT's WeightBiasQuantization would quantise
its float weights per tensor at session creation, undoing the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.errors import ConversionError
from edgeship.types import Layout

__all__ = ["UnsupportedTFLiteOp", "fusion_report", "ort_optimized_graph", "qdq_from_tflite"]


class UnsupportedTFLiteOp(ConversionError):
    """The int8 TFLite holds an op (or an op form) the direct QDQ rewrite does not handle."""


@dataclass
class _Act:
    """An activation tensor as built in ONNX: its name, element type and whether it is NHWC data held NCHW."""

    name: str
    nchw: bool
    scale: float | None  # None: float tensor
    zero_point: int | None
    onnx_type: int  # TensorProto element type


#: A stride-2 conv over at most this many input channels (the RGB stem) runs as SpaceToDepth + a stride-1 conv.
S2D_MAX_CHANNELS = 4


def qdq_from_tflite(tflite: bytes, *, input_name: str, output_name: str, layout: Layout = Layout.NHWC,
                    opset: int = 17) -> Any:
    """The ONNX ``ModelProto`` (QDQ, opset ``opset``, dynamic batch) computing what ``tflite`` computes.

    ``layout``: the ONNX input's layout (NHWC as the .tflite by default, with one uint8 Transpose in the graph;
    NCHW removes it). The input and output element types are the .tflite's (uint8, int8 or float32)."""
    return _Builder(tflite, opset).build(input_name, output_name, layout)


# -- TFLite reading ------------------------------------------------------------------------------------------------


def _tfl():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


_NP_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "FLOAT32": np.float32, "INT64": np.int64,
             "INT16": np.int16}
_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "SLICE", "CAST", "SQUEEZE", "RESHAPE"}
_CLAMPS = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


class _Builder:
    def __init__(self, tflite: bytes, opset: int) -> None:
        from ai_edge_litert.tools import flatbuffer_utils

        tfl = _tfl()
        self.model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
        if len(self.model.subgraphs) != 1:
            raise UnsupportedTFLiteOp(f"the int8 TFLite has {len(self.model.subgraphs)} subgraphs; one is expected")
        self.sg = self.model.subgraphs[0]
        self.opset = opset
        self.op_names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
        self.type_names = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
        self.act_names = {v: k for k, v in vars(tfl.ActivationFunctionType).items() if not k.startswith("_")}
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.acts: dict[int, _Act] = {}
        self._count = 0
        self._qparam_cache: dict[tuple, tuple[str, str]] = {}

    # -- tensors --------------------------------------------------------------------------------------------------
    def tensor(self, i: int) -> Any:
        return self.sg.tensors[i]

    def tname(self, i: int) -> str:
        n = self.tensor(i).name
        return n.decode() if isinstance(n, bytes) else str(n)

    def ttype(self, i: int) -> str:
        return self.type_names[self.tensor(i).type]

    def shape(self, i: int) -> list[int]:
        return [int(d) for d in self.tensor(i).shape]

    def data(self, i: int) -> np.ndarray | None:
        t = self.tensor(i)
        buf = self.model.buffers[t.buffer] if t.buffer < len(self.model.buffers) else None
        if buf is None or buf.data is None or len(buf.data) == 0:
            return None
        dtype = _NP_TYPES.get(self.ttype(i))
        if dtype is None:
            raise UnsupportedTFLiteOp(f"constant tensor '{self.tname(i)}' has type {self.ttype(i)}")
        return np.frombuffer(bytes(buf.data), dtype=dtype).reshape(self.shape(i))

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.tensor(i).quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise UnsupportedTFLiteOp(f"tensor '{self.tname(i)}' is not quantised")
        zp = q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else np.zeros(len(q.scale), np.int64)
        return np.asarray(q.scale, np.float32), np.asarray(zp, np.int64), int(q.quantizedDimension)

    def uint8_params(self, i: int) -> tuple[float, int]:
        """The activation's parameters in the uint8 domain (int8 zero point + 128)."""
        scale, zp, _ = self.quant(i)
        if scale.size != 1:
            raise UnsupportedTFLiteOp(f"activation '{self.tname(i)}' is quantised per channel")
        kind = self.ttype(i)
        if kind not in ("INT8", "UINT8"):
            raise UnsupportedTFLiteOp(f"activation '{self.tname(i)}' is {kind}, not 8-bit")
        z = int(zp[0]) + (128 if kind == "INT8" else 0)
        return float(scale[0]), z

    # -- ONNX building ----------------------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}__{self._count}"

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, name: str | None = None,
             domain: str | None = None, **attrs: Any) -> list[str]:
        from onnx import helper

        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or self.fresh(op), domain=domain, **attrs))
        return outputs

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = base
        while name in self.inits:
            name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def qparams(self, scale: float, zp: int, dtype: type = np.uint8) -> tuple[str, str]:
        key = (np.float32(scale).tobytes(), int(zp), np.dtype(dtype).name)
        if key not in self._qparam_cache:
            n = len(self._qparam_cache)
            self._qparam_cache[key] = (self.const(f"qscale_{n}", np.array(scale, np.float32)),
                                       self.const(f"qzp_{n}", np.array(zp, dtype)))
        return self._qparam_cache[key]

    def dq(self, act: _Act) -> str:
        """A DequantizeLinear of its own for one consumer (ORT's DedicatedQDQPair)."""
        if act.scale is None:
            return act.name
        dtype = np.int8 if act.onnx_type == 3 else np.uint8
        s, z = self.qparams(act.scale, act.zero_point, dtype)
        return self.node("DequantizeLinear", [act.name, s, z], [self.fresh(act.name + "_dq")])[0]

    def dq_for_float(self, act: _Act, channels: int) -> str:
        """The DequantizeLinear in front of a layer the quantiser left in float (float weights). Its scale is
        given per channel (``channels`` equal values on axis 1): a scalar one would let ORT's
        WeightBiasQuantization quantise that layer's weights per tensor (measured: 8 output steps off LiteRT)."""
        if act.scale is None:
            return act.name
        s = self.const("float_input_scale", np.full(channels, act.scale, np.float32))
        z = self.const("float_input_zero_point", np.full(channels, act.zero_point, np.uint8))
        return self.node("DequantizeLinear", [act.name, s, z], [self.fresh(act.name + "_dq")], axis=1)[0]

    def q(self, value: str, out: int, nchw: bool, name: str | None = None) -> _Act:
        """QuantizeLinear of a float result into TFLite tensor ``out``'s uint8 form, then its fused clamp (none)."""
        scale, zp = self.uint8_params(out)
        s, z = self.qparams(scale, zp)
        res = self.node("QuantizeLinear", [value, s, z], [name or self.fresh(self.tname(out))])[0]
        return _Act(res, nchw, scale, zp, 2)

    def clamp(self, act: _Act, fused: int, out: int) -> _Act:
        """TFLite's fused activation in the integer domain: nothing when the output's quantised range is
        already the clamp (QuantizeLinear saturates), else a uint8 Clip after the QuantizeLinear."""
        kind = self.act_names.get(fused, str(fused))
        if kind == "NONE":
            return act
        if kind not in _CLAMPS:
            raise UnsupportedTFLiteOp(f"fused activation {kind} on '{self.tname(out)}'")
        lo, hi = _CLAMPS[kind]
        scale, zp = act.scale, act.zero_point
        qmin = max(0, zp + int(_round_away(lo / scale)))
        qmax = 255 if hi is None else min(255, zp + int(_round_away(hi / scale)))
        if (qmin, qmax) == (0, 255):
            return act
        lo_name = self.const("clip_min", np.array(qmin, np.uint8))
        hi_name = self.const("clip_max", np.array(qmax, np.uint8))
        res = self.node("Clip", [act.name, lo_name, hi_name], [self.fresh(act.name + "_clip")])[0]
        return _Act(res, act.nchw, scale, zp, 2)

    def finish(self, value: str, out: int, nchw: bool, fused: int = 0) -> _Act:
        """An op's float result as TFLite tensor ``out``: quantised then clamped for an 8-bit ``out``; for a float
        ``out`` (a layer the quantiser left in float) the fused activation in float."""
        if self.ttype(out) != "FLOAT32":
            return self.clamp(self.q(value, out, nchw), fused, out)
        kind = self.act_names.get(fused, str(fused))
        if kind != "NONE":
            if kind not in _CLAMPS:
                raise UnsupportedTFLiteOp(f"fused activation {kind} on '{self.tname(out)}'")
            lo, hi = _CLAMPS[kind]
            if hi is None:
                value = self.node("Relu", [value])[0]
            else:
                value = self.node("Clip", [value, self.const("clip_lo", np.array(lo, np.float32)),
                                           self.const("clip_hi", np.array(hi, np.float32))])[0]
        return _Act(value, nchw, None, None, 1)

    def nchw(self, act: _Act, i: int) -> _Act:
        """``act`` with 4D data in NCHW (a uint8 Transpose when it is held NHWC)."""
        if act.nchw or len(self.shape(i)) != 4:
            return act
        res = self.node("Transpose", [act.name], [self.fresh(act.name + "_nchw")], perm=[0, 3, 1, 2])[0]
        return _Act(res, True, act.scale, act.zero_point, act.onnx_type)

    def nhwc(self, act: _Act) -> _Act:
        if not act.nchw:
            return act
        res = self.node("Transpose", [act.name], [self.fresh(act.name + "_nhwc")], perm=[0, 2, 3, 1])[0]
        return _Act(res, False, act.scale, act.zero_point, act.onnx_type)

    # -- the graph ---------------------------------------------------------------------------------------------------
    def build(self, input_name: str, output_name: str, layout: Layout) -> Any:
        import onnx
        from onnx import TensorProto, helper

        sg = self.sg
        if len(sg.inputs) != 1 or len(sg.outputs) != 1:
            raise UnsupportedTFLiteOp("the int8 TFLite must have one input and one output")
        (inp,), (outp,) = [int(i) for i in sg.inputs], [int(i) for i in sg.outputs]
        in_shape = self.shape(inp)
        if len(in_shape) != 4:
            raise UnsupportedTFLiteOp(f"the input has shape {in_shape}; an image (1, H, W, C) is expected")
        io_types = {"UINT8": TensorProto.UINT8, "INT8": TensorProto.INT8, "FLOAT32": TensorProto.FLOAT}
        in_type = io_types.get(self.ttype(inp))
        if in_type is None:
            raise UnsupportedTFLiteOp(f"input type {self.ttype(inp)}")
        _, h, w, c = in_shape
        dims = ["N", c, h, w] if layout is Layout.NCHW else ["N", h, w, c]
        graph_in = helper.make_tensor_value_info(input_name, in_type, dims)
        self.acts[inp] = self.input_act(inp, input_name, in_type, layout)

        for op in sg.operators:
            code = self.model.operatorCodes[op.opcodeIndex]
            kind = self.op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
            outputs = [int(o) for o in op.outputs]
            if kind in _SHAPE_OPS and all(self.ttype(o) in ("INT32", "INT64") for o in outputs):
                continue  # a dynamic Reshape's target computed at run time: the static shapes stand for it
            handler = getattr(self, f"op_{kind.lower()}", None)
            if handler is None:
                raise UnsupportedTFLiteOp(f"TFLite op {kind} ('{self.tname(int(op.outputs[0]))}') has no QDQ rewrite")
            handler(op, [int(i) for i in op.inputs], [int(i) for i in op.outputs])

        final = self.acts[outp]
        if len(self.shape(outp)) == 4:
            final = self.nhwc(final)
        out_type = io_types.get(self.ttype(outp))
        if out_type is None:
            raise UnsupportedTFLiteOp(f"output type {self.ttype(outp)}")
        final = self.output_as(final, outp, out_type)
        self.rename(final.name, output_name)
        out_dims = ["N", *self.shape(outp)[1:]]
        graph_out = helper.make_tensor_value_info(output_name, out_type, out_dims)
        graph = helper.make_graph(self.nodes, "edgeship_int8", [graph_in], [graph_out], list(self.inits.values()))
        model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                              producer_name="edgeship")  # the IR version the opset needs
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)

    def input_act(self, i: int, name: str, onnx_type: int, layout: Layout) -> _Act:
        from onnx import TensorProto

        nchw = layout is Layout.NCHW
        if onnx_type == TensorProto.FLOAT:
            act = _Act(name, nchw, None, None, onnx_type)
        else:
            scale, zp, _ = self.quant(i)
            act = _Act(name, nchw, float(scale[0]), int(zp[0]), onnx_type)
            if onnx_type == TensorProto.INT8:  # to the uint8 domain: exact, same scale, zero point + 128
                s, z = self.qparams(act.scale, act.zero_point + 128)
                res = self.node("QuantizeLinear", [self.dq(act), s, z], [self.fresh(name + "_u8")])[0]
                act = _Act(res, nchw, act.scale, act.zero_point + 128, TensorProto.UINT8)
        return act if nchw else self.nchw(act, i)

    def output_as(self, act: _Act, i: int, onnx_type: int) -> _Act:
        from onnx import TensorProto

        if onnx_type == act.onnx_type:
            return act
        if onnx_type == TensorProto.FLOAT:
            return _Act(self.dq(act), act.nchw, None, None, onnx_type)
        if onnx_type == TensorProto.INT8 and act.onnx_type == TensorProto.UINT8:
            s, z = self.qparams(act.scale, act.zero_point - 128, np.int8)
            res = self.node("QuantizeLinear", [self.dq(act), s, z], [self.fresh(act.name + "_s8")])[0]
            return _Act(res, act.nchw, act.scale, act.zero_point - 128, onnx_type)
        raise UnsupportedTFLiteOp(f"cannot make the output {onnx_type} from {act.onnx_type}")

    def rename(self, old: str, new: str) -> None:
        for n in self.nodes:
            n.output[:] = [new if o == old else o for o in n.output]
            n.input[:] = [new if x == old else x for x in n.input]

    def get(self, i: int) -> _Act:
        if i not in self.acts:
            raise UnsupportedTFLiteOp(f"tensor '{self.tname(i)}' is used before it is computed (or is a constant "
                                      "activation)")
        return self.acts[i]

    # -- ops --------------------------------------------------------------------------------------------------------
    def op_quantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        src, (out,) = self.get(ins[0]), outs
        if src.scale is None:  # float -> 8 bit: the model's float input (or a float layer's output)
            # As XNNPACK quantises: x times the reciprocal scale (float32), rounded half to even, plus the zero
            # point. QuantizeLinear would divide by the scale instead, and a preprocessed pixel often lands on a
            # tie (x / (1/127.5) = p - 127.5) that the two round apart (measured: 27 % of outputs equal).
            scale, zp = self.uint8_params(out)
            inv = self.const("inverse_scale", np.array(np.float32(1.0) / np.float32(scale), np.float32))
            one, z = self.qparams(1.0, zp)
            scaled = self.node("Mul", [src.name, inv])[0]
            res = self.node("QuantizeLinear", [scaled, one, z], [self.fresh(self.tname(out))])[0]
            self.acts[out] = _Act(res, src.nchw, scale, zp, 2)
            return
        scale, zp = self.uint8_params(out)
        if np.float32(scale) == np.float32(src.scale) and zp == src.zero_point:
            self.acts[out] = src  # int8 <-> uint8 with the same scale: the same uint8 values
            return
        self.acts[out] = self.q(self.dq(src), out, src.nchw)  # a requantisation

    def op_dequantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        src, shape = self.get(ins[0]), self.shape(outs[0])
        if outs[0] in self.sg.outputs or len(shape) < 2:
            self.acts[outs[0]] = _Act(self.dq(src), src.nchw, None, None, 1)
        else:  # into a layer the quantiser left in float
            self.acts[outs[0]] = _Act(self.dq_for_float(src, shape[-1]), src.nchw, None, None, 1)

    def _conv(self, op: Any, ins: list[int], outs: list[int], depthwise: bool) -> None:
        opts = op.builtinOptions
        x = self.nchw(self.get(ins[0]), ins[0])
        w_i, out = ins[1], outs[0]
        w = self.data(w_i)
        if w is None:
            raise UnsupportedTFLiteOp(f"convolution '{self.tname(out)}' has non-constant weights")
        if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], channel axis 3 -> 0
            weight = np.transpose(w, (3, 0, 1, 2))
            group = self.shape(ins[0])[3]
            expected_axis = 3
        else:  # [O, kh, kw, I] -> [O, I, kh, kw]
            weight = np.transpose(w, (0, 3, 1, 2))
            group = 1
            expected_axis = 0
            if self.shape(ins[0])[3] != w.shape[3]:
                raise UnsupportedTFLiteOp(f"grouped convolution '{self.tname(out)}'")
        float_layer = w.dtype == np.float32
        kh, kw = weight.shape[2:]
        _, in_h, in_w, channels = self.shape(ins[0])
        _, out_h, out_w, _ = self.shape(out)
        sh, sw = opts.strideH, opts.strideW
        dh, dw = opts.dilationHFactor or 1, opts.dilationWFactor or 1
        pads = _pads(opts.padding, (in_h, in_w), (out_h, out_w), (kh, kw), (sh, sw), (dh, dw))
        s2d = (group == 1 and not float_layer and x.scale is not None and channels <= S2D_MAX_CHANNELS
               and (sh, sw, dh, dw) == (2, 2, 1, 1))
        if s2d:  # the stem: a stride-2 conv over 3 channels, as a stride-1 conv over 12 (bit-exact, faster in ORT)
            x, weight, pads = self.space_to_depth(x, weight, pads, (in_h, in_w), (out_h, out_w))
            kh, kw, sh, sw = *weight.shape[2:], 1, 1
        x_in = self.dq_for_float(x, channels) if float_layer else self.dq(x)
        inputs = [x_in, self.weight(weight, expected_axis, w_i)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.bias(ins[2]))
        y = self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], pads=pads,
                      group=group)[0]
        self.acts[out] = self.finish(y, out, True, opts.fusedActivationFunction)

    def space_to_depth(self, x: _Act, weight: np.ndarray, pads: list[int], in_hw: tuple[int, int],
                       out_hw: tuple[int, int]) -> tuple[_Act, np.ndarray, list[int]]:
        """A stride-2 convolution of a few channels rewritten as a stride-1 convolution of 4x as many (``x``:
        the 8-bit input, NCHW).

        MLAS runs a 3-channel QLinearConv through im2col with a 27-long reduction, which left MobileNet's stem at
        13 % of ORT's time on MobileNetV2-1.0-224 (XNNPACK has a kernel for it). Padded with the input's zero
        point (what QLinearConv pads with) to an even size and folded by SpaceToDepth(2), the same products become
        a kernel of ceil(k/2) x ceil(k/2) over 4C channels, stride 1: tap (2i + a, 2j + b) of channel c is tap
        (i, j) of channel (2a + b)·C + c, and the taps beyond k are zero weights. Every int32 sum holds the same
        products, so the output is bit-identical; measured 1.4-1.9x faster for that conv alone (ORT 1.31, 1 thread).
        """
        o, c, kh, kw = weight.shape
        kh2, kw2 = -(-kh // 2), -(-kw // 2)
        folded = np.zeros((o, 4 * c, kh2, kw2), weight.dtype)
        for a in range(2):
            for b in range(2):
                taps = weight[:, :, a::2, b::2]  # (o, c, <= kh2, <= kw2)
                folded[:, (2 * a + b) * c:(2 * a + b + 1) * c, :taps.shape[2], :taps.shape[3]] = taps
        top, left = pads[0], pads[1]
        bottom = 2 * (out_hw[0] + kh2 - 1) - top - in_hw[0]
        right = 2 * (out_hw[1] + kw2 - 1) - left - in_hw[1]
        if bottom < 0 or right < 0:  # an input larger than the conv reads: keep the plain conv
            return x, weight, pads
        zp = np.array(x.zero_point, np.int8 if x.onnx_type == 3 else np.uint8)
        pad_value = self.const("s2d_pad_value", zp)
        pads4 = [0, 0, top, left, 0, 0, bottom, right]
        padded = self.node("Pad", [x.name, self.const("s2d_pads", np.array(pads4, np.int64)), pad_value],
                           [self.fresh(x.name + "_pad")], mode="constant")
        folded_x = self.node("SpaceToDepth", padded, [self.fresh(x.name + "_s2d")], blocksize=2)[0]
        return _Act(folded_x, True, x.scale, x.zero_point, x.onnx_type), folded, [0, 0, 0, 0]

    def op_conv_2d(self, op, ins, outs):
        self._conv(op, ins, outs, depthwise=False)

    def op_depthwise_conv_2d(self, op, ins, outs):
        self._conv(op, ins, outs, depthwise=True)

    def weight(self, weight: np.ndarray, tfl_axis: int, i: int) -> str:
        """Float weights as they are (a layer kept in float); int8 weights behind their DequantizeLinear."""
        if weight.dtype == np.float32:
            return self.const(_safe(self.tname(i)), np.ascontiguousarray(weight))
        scale, zp, axis = self.quant(i)
        axis = axis if scale.size > 1 else None
        if axis is not None and axis != tfl_axis:
            raise UnsupportedTFLiteOp(f"weights '{self.tname(i)}' are quantised along axis {axis}")
        if weight.dtype != np.int8:
            raise UnsupportedTFLiteOp(f"weights '{self.tname(i)}' are {weight.dtype}, not int8")
        base = _safe(self.tname(i))
        w = self.const(base, np.ascontiguousarray(weight))
        s = self.const(base + "_scale", scale if axis is not None else np.array(scale[0], np.float32))
        z = self.const(base + "_zero_point", zp.astype(np.int8) if axis is not None else np.array(zp[0], np.int8))
        attrs = {"axis": 0} if axis is not None else {}
        return self.node("DequantizeLinear", [w, s, z], [self.fresh(base + "_dq")], **attrs)[0]

    def bias(self, i: int) -> str:
        b = self.data(i)
        if b is not None and b.dtype == np.float32:
            return self.const(_safe(self.tname(i)), b.reshape(-1))
        if b is None or b.dtype != np.int32:
            raise UnsupportedTFLiteOp(f"bias '{self.tname(i)}' is not a constant int32 tensor")
        scale, zp, _ = self.quant(i)
        base = _safe(self.tname(i))
        per_channel = scale.size > 1
        bn = self.const(base, b.reshape(-1))
        s = self.const(base + "_scale", scale if per_channel else np.array(scale[0], np.float32))
        z = self.const(base + "_zero_point", zp.astype(np.int32) if per_channel else np.array(zp[0], np.int32))
        attrs = {"axis": 0} if per_channel else {}
        return self.node("DequantizeLinear", [bn, s, z], [self.fresh(base + "_dq")], **attrs)[0]

    def _binary(self, onnx_op: str, op: Any, ins: list[int], outs: list[int]) -> None:
        acts = []
        for i in ins:
            if i in self.acts:
                acts.append(self.get(i))
                continue
            value = self.data(i)  # a constant operand
            if value is None:
                raise UnsupportedTFLiteOp(f"{onnx_op} input '{self.tname(i)}' is neither computed nor constant")
            if value.ndim == 4:
                value = np.transpose(value, (0, 3, 1, 2))
            elif value.ndim in (1, 3) and any(len(self.shape(j)) == 4 for j in ins if j in self.acts):
                value = value.reshape(-1, 1, 1) if value.ndim == 1 else np.transpose(value, (2, 0, 1))
            if value.dtype == np.float32:
                acts.append(_Act(self.const(_safe(self.tname(i)), value), value.ndim >= 3, None, None, 1))
                continue
            scale, zp = self.uint8_params(i)
            u8 = (value.astype(np.int32) + (128 if value.dtype == np.int8 else 0)).astype(np.uint8)
            acts.append(_Act(self.const(_safe(self.tname(i)), u8), value.ndim >= 3, scale, zp, 2))
        four_d = [a for a, i in zip(acts, ins) if len(self.shape(i)) == 4]
        if len(four_d) != len(acts) and four_d:
            if any(len(self.shape(i)) not in (0, 1, 4) for i in ins):
                raise UnsupportedTFLiteOp(f"{onnx_op} '{self.tname(outs[0])}' broadcasts between ranks")
        acts = [self.nchw(a, i) for a, i in zip(acts, ins)]
        y = self.node(onnx_op, [self.dq(a) for a in acts])[0]
        out = outs[0]
        nchw = len(self.shape(out)) == 4
        fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        self.acts[out] = self.finish(y, out, nchw, fused)

    def op_add(self, op, ins, outs):
        self._binary("Add", op, ins, outs)

    def op_mul(self, op, ins, outs):
        self._binary("Mul", op, ins, outs)

    def op_mean(self, op: Any, ins: list[int], outs: list[int]) -> None:
        axes = self.data(ins[1])
        rank = len(self.shape(ins[0]))
        if axes is None or rank != 4 or sorted(int(a) % 4 for a in np.ravel(axes)) != [1, 2]:
            raise UnsupportedTFLiteOp(f"MEAN '{self.tname(outs[0])}' is not a global average pool over H and W")
        x = self.nchw(self.get(ins[0]), ins[0])
        y = self.node("GlobalAveragePool", [self.dq(x)])[0]
        pooled = self.finish(y, outs[0], True)
        if not op.builtinOptions.keepDims:
            flat = self.node("Flatten", [pooled.name], [self.fresh(pooled.name + "_flat")], axis=1)[0]
            pooled = _Act(flat, False, pooled.scale, pooled.zero_point, pooled.onnx_type)
        self.acts[outs[0]] = pooled

    def op_fully_connected(self, op: Any, ins: list[int], outs: list[int]) -> None:
        opts = op.builtinOptions
        x, x_shape = self.get(ins[0]), self.shape(ins[0])
        if len(x_shape) == 4 and x.nchw and (x_shape[1] != 1 or x_shape[2] != 1):
            x = self.nhwc(x)  # TFLite flattens in NHWC order
        if len(x_shape) != 2:
            flat = self.node("Flatten", [x.name], [self.fresh(x.name + "_flat")], axis=1)[0]
            x = _Act(flat, False, x.scale, x.zero_point, x.onnx_type)
        w_i = ins[1]
        w = self.data(w_i)
        if w is None or w.ndim != 2:
            raise UnsupportedTFLiteOp(f"FULLY_CONNECTED '{self.tname(outs[0])}' has non-constant or non-2D weights")
        x_in = self.dq_for_float(x, w.shape[1]) if w.dtype == np.float32 else self.dq(x)
        inputs = [x_in, self.weight(w, 0, w_i)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.bias(ins[2]))
        if len(self.shape(outs[0])) != 2:
            raise UnsupportedTFLiteOp(f"FULLY_CONNECTED '{self.tname(outs[0])}' keeps more than two dimensions")
        y = self.node("Gemm", inputs, transB=1)[0]
        self.acts[outs[0]] = self.finish(y, outs[0], False, opts.fusedActivationFunction)

    def op_reshape(self, op: Any, ins: list[int], outs: list[int]) -> None:
        x, out = self.get(ins[0]), outs[0]
        in_shape, out_shape = self.shape(ins[0]), self.shape(out)
        if x.nchw and len(in_shape) == 4 and not (in_shape[1] == in_shape[2] == 1 and len(out_shape) == 2):
            x = self.nhwc(x)
        target = self.const("shape", np.array([0, *out_shape[1:]], np.int64))
        y = self.node("Reshape", [x.name, target], [self.fresh(_safe(self.tname(out)))])[0]
        self.acts[out] = self.nchw(_Act(y, False, x.scale, x.zero_point, x.onnx_type), out)

    def op_squeeze(self, op, ins, outs):
        self.op_reshape(op, ins[:1], outs)

    def op_pad(self, op: Any, ins: list[int], outs: list[int]) -> None:
        x = self.nchw(self.get(ins[0]), ins[0])
        pads = self.data(ins[1])
        if pads is None or pads.shape != (4, 2):
            raise UnsupportedTFLiteOp(f"PAD '{self.tname(outs[0])}' is not a constant 4D padding")
        nchw = pads[[0, 3, 1, 2]]
        p = self.const("pads", np.concatenate([nchw[:, 0], nchw[:, 1]]).astype(np.int64))
        # real zero, as TFLite pads
        v = self.const("pad_value", np.array(0.0, np.float32) if x.scale is None else np.array(x.zero_point, np.uint8))
        y = self.node("Pad", [x.name, p, v], [self.fresh(_safe(self.tname(outs[0])))], mode="constant")[0]
        self.acts[outs[0]] = _Act(y, True, x.scale, x.zero_point, x.onnx_type)

    def op_max_pool_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        x = self.nchw(self.get(ins[0]), ins[0])
        attrs = self.pool_attrs(op, ins[0], outs[0])
        y = self.node("MaxPool", [x.name], [self.fresh(_safe(self.tname(outs[0])))], **attrs)[0]
        fused = op.builtinOptions.fusedActivationFunction
        if x.scale is None:
            self.acts[outs[0]] = self.finish(y, outs[0], True, fused)
        else:
            self.acts[outs[0]] = self.clamp(_Act(y, True, x.scale, x.zero_point, x.onnx_type), fused, outs[0])

    def op_average_pool_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        x = self.nchw(self.get(ins[0]), ins[0])
        y = self.node("AveragePool", [self.dq(x)], count_include_pad=0, **self.pool_attrs(op, ins[0], outs[0]))[0]
        self.acts[outs[0]] = self.finish(y, outs[0], True, op.builtinOptions.fusedActivationFunction)

    def pool_attrs(self, op: Any, i: int, out: int) -> dict[str, Any]:
        o = op.builtinOptions
        _, in_h, in_w, _ = self.shape(i)
        _, out_h, out_w, _ = self.shape(out)
        k, s = (o.filterHeight, o.filterWidth), (o.strideH, o.strideW)
        return {"kernel_shape": list(k), "strides": list(s),
                "pads": _pads(o.padding, (in_h, in_w), (out_h, out_w), k, s, (1, 1))}

    def _unary(self, onnx_op: str, ins: list[int], outs: list[int], **attrs: Any) -> None:
        x = self.get(ins[0])
        y = self.node(onnx_op, [self.dq(x)], **attrs)[0]
        self.acts[outs[0]] = self.finish(y, outs[0], x.nchw)

    def op_softmax(self, op: Any, ins: list[int], outs: list[int]) -> None:
        if abs(op.builtinOptions.beta - 1.0) > 1e-6 or len(self.shape(ins[0])) != 2:
            raise UnsupportedTFLiteOp(f"SOFTMAX '{self.tname(outs[0])}' has beta != 1 or is not 2D")
        self._unary("Softmax", ins, outs, axis=-1)

    def op_logistic(self, op, ins, outs):
        self._unary("Sigmoid", ins, outs)

    def op_hard_swish(self, op, ins, outs):
        self._unary("HardSwish", ins, outs)

    def op_relu(self, op, ins, outs):
        self._activation("RELU", ins, outs)

    def op_relu6(self, op, ins, outs):
        self._activation("RELU6", ins, outs)

    def _activation(self, kind: str, ins: list[int], outs: list[int]) -> None:
        x = self.get(ins[0])
        code = {v: k for k, v in self.act_names.items()}[kind]
        if self.ttype(outs[0]) == "FLOAT32":
            self.acts[outs[0]] = self.finish(self.dq(x), outs[0], x.nchw, code)
            return
        scale, zp = self.uint8_params(outs[0])
        if not (np.float32(scale) == np.float32(x.scale) and zp == x.zero_point):
            lo, hi = _CLAMPS[kind]
            args = [self.dq(x), self.const("clip_lo", np.array(lo, np.float32))]
            if hi is not None:
                args.append(self.const("clip_hi", np.array(hi, np.float32)))
            x = self.q(self.node("Clip", args)[0], outs[0], x.nchw)
        self.acts[outs[0]] = self.clamp(x, code, outs[0])

    def op_concatenation(self, op: Any, ins: list[int], outs: list[int]) -> None:
        rank = len(self.shape(outs[0]))
        axis = op.builtinOptions.axis % rank
        acts = [self.nchw(self.get(i), i) for i in ins]
        if rank == 4:
            axis = [0, 2, 3, 1][axis]
        y = self.node("Concat", [self.dq(a) for a in acts], axis=axis)[0]
        self.acts[outs[0]] = self.finish(y, outs[0], rank == 4, op.builtinOptions.fusedActivationFunction)


def _pads(padding: int, in_hw, out_hw, kernel, strides, dilations) -> list[int]:
    """ONNX pads [top, left, bottom, right] for TFLite's SAME (0) / VALID (1) padding, as TFLite computes them
    (the extra row/column, if any, at the bottom/right)."""
    if padding == 1:
        return [0, 0, 0, 0]
    before, after = [], []
    for i, o, k, s, d in zip(in_hw, out_hw, kernel, strides, dilations):
        total = max((o - 1) * s + (k - 1) * d + 1 - i, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


def _round_away(x: float) -> float:
    """TFLite's TfLiteRound: half away from zero."""
    return float(np.sign(x) * np.floor(abs(x) + 0.5))


def _safe(name: str) -> str:
    return name.replace(";", "_").replace(":", "_")


# -- what ONNX Runtime makes of it ---------------------------------------------------------------------------------

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
