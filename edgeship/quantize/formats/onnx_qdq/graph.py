"""Reading the int8 TFLite and building the ONNX graph: the tensors' data, types and 8-bit parameters on one side,
QDQ nodes, constants and layout moves on the other, and the walk over the TFLite ops that calls each op's rewrite
rule (:mod:`.rules`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.errors import ConversionError
from edgeship.types import Layout


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


# -- TFLite reading ------------------------------------------------------------------------------------------------


def _tfl():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


_NP_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "FLOAT32": np.float32, "INT64": np.int64,
             "INT16": np.int16}
_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "SLICE", "CAST", "SQUEEZE", "RESHAPE"}
_CLAMPS = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


class Graph:
    """The TFLite being read and the ONNX graph being built; :class:`.rules.Rewrite` adds the op rules."""

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
