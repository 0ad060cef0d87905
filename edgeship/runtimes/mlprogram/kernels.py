"""NumPy kernels for the ML Program ops edgeship's Core ML artifacts contain.

A kernel is registered per MIL op type as a *builder*: ``build(consts) -> run``, called once when the program is
planned with the op's constant inputs by parameter name (weights, strides, axes...), so a kernel can prepare
what does not depend on the data. ``run(v)`` gets every input by its MIL parameter name (constants included;
an optional input the op was not given is absent) and returns the op's output value, or a tuple of them for an
op with several outputs.

Kernels compute in float32 (the executor hands them fp16 tensors already widened and rounds their results back
to the op's declared output type): this module knows nothing of precision. Layouts are MIL's: NCHW for conv and
pooling, weights (C_out, C_in / groups, kH, kW), linear weights (out, in).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Value = Any
Run = Callable[[dict[str, Value]], Value]
Builder = Callable[[dict[str, Value]], Run]

KERNELS: dict[str, Builder] = {}


def kernel(*op_types: str) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        for t in op_types:
            KERNELS[t] = build
        return build

    return register


def elementwise(op_type: str, fn: Callable[..., np.ndarray]) -> None:
    """An op whose builder needs nothing from its constants: ``run(v) = fn(v)``."""
    KERNELS[op_type] = lambda consts: fn


def _get(v: dict[str, Value], key: str, default: Value = None) -> Value:
    value = v.get(key)
    return default if value is None else value


def _ints(value: Value) -> list[int]:
    return [int(i) for i in np.asarray(value).reshape(-1)]


# -- elementwise -------------------------------------------------------------------------------------------------
elementwise("add", lambda v: np.add(v["x"], v["y"]))
elementwise("sub", lambda v: np.subtract(v["x"], v["y"]))
elementwise("mul", lambda v: np.multiply(v["x"], v["y"]))
elementwise("real_div", lambda v: np.divide(v["x"], v["y"]))
elementwise("maximum", lambda v: np.maximum(v["x"], v["y"]))
elementwise("minimum", lambda v: np.minimum(v["x"], v["y"]))
elementwise("pow", lambda v: np.power(v["x"], v["y"]))
elementwise("relu", lambda v: np.maximum(v["x"], 0))
elementwise("relu6", lambda v: np.clip(v["x"], 0, 6))
elementwise("clip", lambda v: np.clip(v["x"], v["alpha"], v["beta"]))
elementwise("sqrt", lambda v: np.sqrt(v["x"]))
elementwise("exp", lambda v: np.exp(v["x"]))
elementwise("tanh", lambda v: np.tanh(v["x"]))
elementwise("abs", lambda v: np.abs(v["x"]))
elementwise("square", lambda v: np.square(v["x"]))
elementwise("identity", lambda v: v["x"])
elementwise("leaky_relu", lambda v: np.where(v["x"] >= 0, v["x"], v["x"] * _get(v, "alpha", 0.01)))
# sigmoid_hard: min(max(alpha * x + beta, 0), 1)
elementwise("sigmoid_hard", lambda v: np.clip(v["x"] * _get(v, "alpha", 0.2) + _get(v, "beta", 0.5), 0, 1))
# round: to the nearest integer, halves to even, as MIL's own value_inference (np.round) computes it ("0.5 is
# rounded to 0", coremltools' iOS15 elementwise_unary.round). coremltools converts TensorFlow's FakeQuant ops to
# clip -> sub -> real_div -> round -> mul -> add (frontend/tensorflow/ops.py FakeQuantWithMinMaxVars).
elementwise("round", lambda v: np.round(v["x"]))
elementwise("floor", lambda v: np.floor(v["x"]))
elementwise("ceil", lambda v: np.ceil(v["x"]))
elementwise("sign", lambda v: np.sign(v["x"]))
elementwise("floor_div", lambda v: np.floor_divide(v["x"], v["y"]))
# cast: the value as is; the executor converts it to the op's declared output dtype
elementwise("cast", lambda v: v["x"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative number only: no overflow warning for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


elementwise("sigmoid", lambda v: _sigmoid(v["x"]))
elementwise("silu", lambda v: v["x"] * _sigmoid(v["x"]))


@kernel("rsqrt")
def _rsqrt(consts: dict[str, Value]) -> Run:
    return lambda v: 1 / np.sqrt(v["x"] + _get(v, "epsilon", 1e-12))


@kernel("softmax")
def _softmax(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        axis = int(_get(v, "axis", -1))
        x = v["x"]
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    return run


# -- shape ---------------------------------------------------------------------------------------------------------
@kernel("reshape")
def _reshape(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x = v["x"]
        shape = _ints(v["shape"])
        # a 0 copies the input's dimension matched from the right (iOS17; iOS15/16 allow 0 only when the ranks
        # are equal, where that is the same position), or is 1 past the input's rank; -1 is inferred
        k = len(shape)
        shape = [(x.shape[j] if (j := x.ndim - (k - i)) >= 0 else 1) if d == 0 else d for i, d in enumerate(shape)]
        return np.reshape(x, shape)

    return run


elementwise("transpose", lambda v: np.transpose(v["x"], _ints(v["perm"])))
elementwise("expand_dims", lambda v: _expand_dims(v["x"], _ints(v["axes"])))
elementwise("squeeze", lambda v: np.squeeze(v["x"], axis=None if v.get("axes") is None else tuple(_ints(v["axes"]))))


def _expand_dims(x: np.ndarray, axes: list[int]) -> np.ndarray:
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(a % rank for a in axes))


@kernel("concat")
def _concat(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        values = list(v["values"])
        axis = int(v["axis"]) % values[0].ndim
        if bool(_get(v, "interleave", False)):
            # interleave: the inputs' slices along axis alternate (x0[0], x1[0], x0[1], x1[1], ...)
            stacked = np.stack(values, axis=axis + 1)
            shape = list(values[0].shape)
            shape[axis] *= len(values)
            return stacked.reshape(shape)
        return np.concatenate(values, axis=axis)

    return run


@kernel("pad")
def _pad(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x, pad = v["x"], _ints(v["pad"])
        mode = str(_get(v, "mode", "constant"))
        k = len(pad) // 2  # pads the last k dimensions, (before, after) each
        widths = [(0, 0)] * (x.ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in range(k)]
        if mode == "constant":
            return np.pad(x, widths, mode="constant", constant_values=float(_get(v, "constant_val", 0.0)))
        if mode == "reflect":
            return np.pad(x, widths, mode="reflect")
        if mode == "replicate":
            return np.pad(x, widths, mode="edge")
        raise ValueError(f"pad mode '{mode}'")

    return run


# -- reductions ----------------------------------------------------------------------------------------------------
def _reduce(fn: Callable[..., np.ndarray]) -> Builder:
    def build(consts: dict[str, Value]) -> Run:
        def run(v: dict[str, Value]) -> np.ndarray:
            axes = v.get("axes")
            axes = None if axes is None else tuple(_ints(axes))
            return fn(v["x"], axis=axes, keepdims=bool(_get(v, "keep_dims", False)))

        return run

    return build


KERNELS["reduce_mean"] = _reduce(np.mean)
KERNELS["reduce_sum"] = _reduce(np.sum)
KERNELS["reduce_max"] = _reduce(np.max)
KERNELS["reduce_min"] = _reduce(np.min)


# -- linear algebra ------------------------------------------------------------------------------------------------
@kernel("matmul")
def _matmul(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x, y = v["x"], v["y"]
        if bool(_get(v, "transpose_x", False)):
            x = np.swapaxes(x, -1, -2)
        if bool(_get(v, "transpose_y", False)):
            y = np.swapaxes(y, -1, -2)
        return np.matmul(x, y)

    return run


@kernel("linear")
def _linear(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        out = np.matmul(v["x"], np.swapaxes(v["weight"], -1, -2))
        bias = v.get("bias")
        return out if bias is None else out + bias

    return run


@kernel("batch_norm")
def _batch_norm(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x = v["x"]
        shape = (1, -1) + (1,) * (x.ndim - 2)  # channel axis 1
        scale = _get(v, "gamma", 1.0) / np.sqrt(v["variance"] + float(_get(v, "epsilon", 1e-5)))
        shift = _get(v, "beta", 0.0) - v["mean"] * scale
        return x * np.reshape(scale, shape) + np.reshape(shift, shape)

    return run


# -- convolution and pooling ---------------------------------------------------------------------------------------
def spatial_pads(pad_type: str, size: list[int], kernel_: list[int], strides: list[int], dilations: list[int],
                 custom: list[int] | None) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, as coremltools' ``aggregated_pad`` defines it: ``same``
    puts the odd pixel after, ``same_lower`` before."""
    if pad_type == "valid":
        return [(0, 0)] * len(size)
    if pad_type == "custom":
        custom = custom or [0] * (2 * len(size))
        return [(custom[2 * i], custom[2 * i + 1]) for i in range(len(size))]
    if pad_type in ("same", "same_lower"):
        pads = []
        for i, k, s, d in zip(size, kernel_, strides, dilations):
            eff = (k - 1) * d + 1
            total = max(0, s * math.ceil(i / s) - i + eff - s)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if pad_type == "same" else (big, small))
        return pads
    raise ValueError(f"pad_type '{pad_type}'")


def _pad_spatial(x: np.ndarray, pads: list[tuple[int, int]], value: float = 0.0) -> np.ndarray:
    if not any(a or b for a, b in pads):
        return x
    return np.pad(x, [(0, 0), (0, 0), *pads], mode="constant", constant_values=value)


def _taps(x: np.ndarray, kh: int, kw: int, strides: list[int], dilations: list[int], out_hw: tuple[int, int]):
    """The (i, j) kernel tap's input view for every output pixel: x[:, :, i*dh :: sh][:Ho], likewise for w."""
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, strides: list[int], pads: list[tuple[int, int]],
           dilations: list[int], groups: int) -> np.ndarray:
    """NCHW conv: x (N, C, H, W), w (C_out, C / groups, kH, kW). Vectorised: a 1x1 conv is one matmul, a
    depthwise conv a sum over its kernel taps (kH*kW whole-tensor multiply-adds), any other an im2col matmul per
    group."""
    n, c = x.shape[:2]
    cout, cg, kh, kw = w.shape
    x = _pad_spatial(x, pads)
    hp, wp = x.shape[2:]
    (sh, sw), (dh, dw) = strides, dilations
    ho = (hp - ((kh - 1) * dh + 1)) // sh + 1
    wo = (wp - ((kw - 1) * dw + 1)) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"conv output would be empty: input {x.shape}, kernel {w.shape}")
    if groups == 1 and kh == kw == 1:
        xs = x[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]
        out = np.matmul(w.reshape(cout, c), xs.reshape(n, c, ho * wo)).reshape(n, cout, ho, wo)
    elif groups == c and cg == 1:  # depthwise, channel multiplier cout // c
        if cout != c:
            x = np.repeat(x, cout // c, axis=1)
        out = np.zeros((n, cout, ho, wo), dtype=np.result_type(x, w))
        tmp = np.empty_like(out)
        for i, j, tap in _taps(x, kh, kw, strides, dilations, (ho, wo)):
            np.multiply(tap, w[:, 0, i, j][None, :, None, None], out=tmp)
            out += tmp
    else:
        eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        win = sliding_window_view(x, (eff_h, eff_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]
        # (N, G, Cg, Ho, Wo, kH, kW) -> (N, G, Cg*kH*kW, Ho*Wo)
        cols = win.reshape(n, groups, cg, ho, wo, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
        cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)
        wg = w.reshape(groups, cout // groups, cg * kh * kw)
        out = np.matmul(wg[None], cols).reshape(n, cout, ho, wo)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


@kernel("conv")
def _conv(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x, w = v["x"], v["weight"]
        if x.ndim != 4:
            raise NotImplementedError(f"conv on a rank-{x.ndim} input (only 2-D convolution is implemented)")
        k = list(w.shape[2:])
        strides = _ints(_get(v, "strides", [1, 1]))
        dilations = _ints(_get(v, "dilations", [1, 1]))
        custom = None if v.get("pad") is None else _ints(v["pad"])
        pads = spatial_pads(str(_get(v, "pad_type", "valid")), list(x.shape[2:]), k, strides, dilations, custom)
        return conv2d(x, w, v.get("bias"), strides, pads, dilations, int(_get(v, "groups", 1)))

    return run


def _pool(kind: str) -> Builder:
    def build(consts: dict[str, Value]) -> Run:
        def run(v: dict[str, Value]) -> np.ndarray:
            x = v["x"]
            if x.ndim != 4:
                raise NotImplementedError(f"{kind} on a rank-{x.ndim} input (only 2-D pooling is implemented)")
            kh, kw = _ints(v["kernel_sizes"])
            strides = _ints(_get(v, "strides", [1, 1]))
            custom = None if v.get("pad") is None else _ints(v["pad"])
            pads = spatial_pads(str(_get(v, "pad_type", "valid")), list(x.shape[2:]), [kh, kw], strides, [1, 1],
                                custom)
            if bool(_get(v, "ceil_mode", False)):
                pads = [_ceil_pad(size, k, s, p) for size, k, s, p in zip(x.shape[2:], (kh, kw), strides, pads)]
            if kind == "max_pool":
                xp = _pad_spatial(x, pads, -np.inf)
                return _reduce_windows(xp, kh, kw, strides, np.maximum)
            xp = _pad_spatial(x, pads)
            total = _reduce_windows(xp, kh, kw, strides, np.add)
            if bool(_get(v, "exclude_padding_from_average", False)):
                ones = _pad_spatial(np.ones((1, 1) + x.shape[2:], dtype=x.dtype), pads)
                return total / _reduce_windows(ones, kh, kw, strides, np.add)
            return total / (kh * kw)

        return run

    return build


def _ceil_pad(size: int, k: int, s: int, pad: tuple[int, int]) -> tuple[int, int]:
    """Extra padding after, so a floor-mode pool gives the ceil-mode output size (coremltools' definition)."""
    before, after = pad
    out = (size + before + after - k + s - 1) // s + 1
    if (out - 1) * s >= size + before and (before or after):
        out -= 1
    return before, max(after, (out - 1) * s + k - size - before)


def _reduce_windows(x: np.ndarray, kh: int, kw: int, strides: list[int], fn: Any) -> np.ndarray:
    ho = (x.shape[2] - kh) // strides[0] + 1
    wo = (x.shape[3] - kw) // strides[1] + 1
    out = None
    for _, _, tap in _taps(x, kh, kw, strides, [1, 1], (ho, wo)):
        out = tap.copy() if out is None else fn(out, tap, out=out)
    assert out is not None
    return out


KERNELS["avg_pool"] = _pool("avg_pool")
KERNELS["max_pool"] = _pool("max_pool")


# -- quantisation (iOS17 activation quantisation, W8A8) -----------------------------------------------------------
def _along(param: Value, axis: Value, rank: int) -> np.ndarray:
    """A scalar, or a vector broadcast along ``axis`` of a rank-``rank`` tensor."""
    p = np.asarray(param)
    if p.ndim == 0 or p.size == 1 and axis is None:
        return p.reshape(())
    shape = [1] * rank
    shape[int(axis) % rank] = -1
    return p.reshape(shape)


@kernel("quantize")
def _quantize(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        x = v["input"]
        dtype = np.dtype(str(v["output_dtype"]))
        info = np.iinfo(dtype)
        scale = _along(v["scale"], v.get("axis"), x.ndim).astype(np.float32)
        zp = _along(_get(v, "zero_point", 0), v.get("axis"), x.ndim).astype(np.float32)
        # round half to even, then saturate (as quantize_values and Core ML do)
        return np.clip(np.rint(x / scale) + zp, info.min, info.max)

    return run


@kernel("dequantize")
def _dequantize(consts: dict[str, Value]) -> Run:
    def run(v: dict[str, Value]) -> np.ndarray:
        q = v["input"]
        scale = _along(v["scale"], v.get("axis"), q.ndim).astype(np.float32)
        zp = _along(_get(v, "zero_point", 0), v.get("axis"), q.ndim).astype(np.float32)
        return (q.astype(np.float32) - zp) * scale

    return run


# -- resizing ------------------------------------------------------------------------------------------------------
def _bilinear_grid(size_in: int, size_out: int, align_corners: bool, half_pixel: bool) -> tuple[np.ndarray, ...]:
    """(low index, high index, weight of high) of each output position along one axis, as MIL's
    ``upsample_bilinear`` documents its sampling grid (coremltools ``ops/defs/iOS15/image_resizing.py``; iOS 16 adds
    ``half_pixel_centers``, default ``not align_corners``): align_corners ``i * (in - 1) / (out - 1)``;
    half-pixel centres ``(i + 0.5) * in / out - 0.5``; else ``i * in / out``; clamped to ``[0, in - 1]``."""
    i = np.arange(size_out, dtype=np.float64)
    if align_corners:
        grid = i * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    elif half_pixel:
        grid = (i + 0.5) * (size_in / size_out) - 0.5
    else:
        grid = i * (size_in / size_out)
    grid = np.clip(grid, 0, size_in - 1)
    lo = np.floor(grid).astype(int)
    return lo, np.minimum(lo + 1, size_in - 1), grid - lo


@kernel("upsample_bilinear")
def _upsample_bilinear(consts: dict[str, Value]) -> Run:
    """Bilinear upsampling of the last two axes (H, W) by ``scale_factor_height``/``_width``; output size
    ``floor(in * scale)``, the grid recomputed from the sizes (MIL's ``recompute_scale_factor`` mode)."""
    def run(v: dict[str, Value]) -> np.ndarray:
        x = np.asarray(v["x"])
        align = bool(_get(v, "align_corners", True))
        half = bool(_get(v, "half_pixel_centers", not align))
        h, w = x.shape[-2:]
        out_h = int(np.floor(h * float(_get(v, "scale_factor_height", 1))))
        out_w = int(np.floor(w * float(_get(v, "scale_factor_width", 1))))
        y = x.astype(np.float32)
        lo, hi, f = _bilinear_grid(h, out_h, align, half)
        y = y[..., lo, :] * (1 - f[:, None]).astype(np.float32) + y[..., hi, :] * f[:, None].astype(np.float32)
        lo, hi, f = _bilinear_grid(w, out_w, align, half)
        y = y[..., lo] * (1 - f).astype(np.float32) + y[..., hi] * f.astype(np.float32)
        return y.astype(x.dtype)

    return run
