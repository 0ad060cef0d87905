"""The NumPy ML Program executor op by op, against independent references (TensorFlow's kernels, or NumPy
written out here): tiny MIL programs are built with coremltools' Builder, converted and saved as ``.mlpackage``
(no optimisation passes, so each op survives as written), then loaded back from disk and executed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeship.runtimes.mlprogram import MLProgram, UnsupportedOp
from edgeship.runtimes.mlprogram.fp16 import round_fp16

RNG = np.random.default_rng(7)


def _ct():
    from edgeship._tf import import_quietly

    return import_quietly("coremltools")


def _tf():
    from edgeship._tf import tf

    return tf()


def save(prog, path: Path, target, **kwargs) -> MLProgram:
    """Convert a Builder program (no passes unless asked) and save it; the executor loads the saved package."""
    from edgeship._tf import silenced

    ct = _ct()
    kwargs.setdefault("pass_pipeline", ct.PassPipeline.EMPTY)
    kwargs.setdefault("compute_precision", ct.precision.FLOAT32)
    with silenced():
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                   **kwargs).save(str(path))
    return MLProgram(path)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


# -- convolution ---------------------------------------------------------------------------------------------------
X_CONV = (1, 4, 11, 13)  # odd, non-square: "same" padding with stride 2 is asymmetric
CONVS = {  # name: conv arguments (weights (C_out, C_in / groups, kH, kW))
    "same_s1": dict(weight=_w(6, 4, 3, 3), strides=[1, 1], pad_type="same"),
    "same_s2": dict(weight=_w(6, 4, 3, 3), strides=[2, 2], pad_type="same", bias=_w(6)),
    "same_lower_s2": dict(weight=_w(6, 4, 3, 3), strides=[2, 2], pad_type="same_lower"),
    "valid_5x3_s2x3": dict(weight=_w(5, 4, 5, 3), strides=[2, 3], pad_type="valid"),
    "custom_pad": dict(weight=_w(3, 4, 3, 3), strides=[1, 2], pad_type="custom", pad=[1, 2, 0, 3]),
    "dilated": dict(weight=_w(4, 4, 3, 3), dilations=[2, 3], pad_type="same"),
    "grouped": dict(weight=_w(6, 2, 3, 3), groups=2, pad_type="custom", pad=[1, 1, 1, 1], bias=_w(6)),
    "depthwise_s2": dict(weight=_w(4, 1, 3, 3), groups=4, strides=[2, 2], pad_type="same", bias=_w(4)),
    "depthwise_x2": dict(weight=_w(8, 1, 3, 3), groups=4, pad_type="valid"),
    "depthwise_dilated": dict(weight=_w(4, 1, 3, 3), groups=4, dilations=[2, 2], pad_type="same"),
    "pointwise_s2": dict(weight=_w(5, 4, 1, 1), strides=[2, 2], pad_type="valid", bias=_w(5)),
    "pointwise": dict(weight=_w(7, 4, 1, 1), pad_type="valid"),
}


@pytest.fixture(scope="module")
def conv_outputs(tmp_path_factory):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=X_CONV)], opset_version=ct.target.iOS16)
    def prog(x):
        return tuple(mb.conv(x=x, name=name, **args) for name, args in CONVS.items())

    program = save(prog, tmp_path_factory.mktemp("conv") / "conv.mlpackage", ct.target.iOS16)
    x = _w(*X_CONV)
    return x, program.execute({"x": x})


def _same_pads(size: int, k: int, s: int, d: int, lower: bool) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def tf_conv(x: np.ndarray, weight, strides=(1, 1), pad_type="valid", pad=None, dilations=(1, 1), groups=1,
            bias=None) -> np.ndarray:
    """The same conv by TensorFlow (NHWC): tf.nn.conv2d per group, tf.nn.depthwise_conv2d when depthwise.
    "same" uses TF's own SAME; "same_lower" and "custom" pad explicitly first."""
    tf = _tf()
    kh, kw = weight.shape[2:]
    xh = np.transpose(x, (0, 2, 3, 1))
    padding = "VALID"
    if pad_type == "same":
        padding = "SAME"
    elif pad_type == "same_lower":
        ph = _same_pads(x.shape[2], kh, strides[0], dilations[0], True)
        pw = _same_pads(x.shape[3], kw, strides[1], dilations[1], True)
        xh = np.pad(xh, [(0, 0), ph, pw, (0, 0)])
    elif pad_type == "custom":
        xh = np.pad(xh, [(0, 0), (pad[0], pad[1]), (pad[2], pad[3]), (0, 0)])
    c = x.shape[1]
    if groups == c and weight.shape[1] == 1:
        mult = weight.shape[0] // c
        # MIL (C*mult, 1, kH, kW), output channel c*mult + m  ->  TF (kH, kW, C, mult)
        filt = np.transpose(weight[:, 0].reshape(c, mult, kh, kw), (2, 3, 0, 1))
        out = tf.nn.depthwise_conv2d(xh, filt, strides=[1, *strides, 1], padding=padding, dilations=dilations)
    else:
        cg, og = c // groups, weight.shape[0] // groups
        out = tf.concat([
            tf.nn.conv2d(xh[..., g * cg:(g + 1) * cg], np.transpose(weight[g * og:(g + 1) * og], (2, 3, 1, 0)),
                         strides=list(strides), padding=padding, dilations=list(dilations))
            for g in range(groups)], axis=-1)
    out = np.asarray(out)
    if bias is not None:
        out = out + bias
    return np.transpose(out, (0, 3, 1, 2))


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_matches_tensorflow(conv_outputs, name):
    x, out = conv_outputs
    ref = tf_conv(x, **CONVS[name])
    assert out[name].shape == ref.shape
    np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-5)


# -- pooling -------------------------------------------------------------------------------------------------------
X_POOL = (1, 3, 10, 11)
POOLS = {
    "max_same_s2": ("max_pool", dict(kernel_sizes=[3, 3], strides=[2, 2], pad_type="same")),
    "max_valid": ("max_pool", dict(kernel_sizes=[2, 3], strides=[2, 2], pad_type="valid")),
    "avg_same_excl": ("avg_pool", dict(kernel_sizes=[3, 3], strides=[2, 2], pad_type="same",
                                       exclude_padding_from_average=True)),
    "avg_custom_incl": ("avg_pool", dict(kernel_sizes=[3, 2], strides=[1, 2], pad_type="custom", pad=[1, 1, 0, 1],
                                         exclude_padding_from_average=False)),
    "avg_ceil": ("avg_pool", dict(kernel_sizes=[3, 3], strides=[2, 2], pad_type="valid", ceil_mode=True,
                                  exclude_padding_from_average=True)),
    "max_ceil": ("max_pool", dict(kernel_sizes=[2, 2], strides=[3, 3], pad_type="valid", ceil_mode=True)),
}


@pytest.fixture(scope="module")
def pool_outputs(tmp_path_factory):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=X_POOL)], opset_version=ct.target.iOS16)
    def prog(x):
        return tuple(getattr(mb, op)(x=x, name=name, **args) for name, (op, args) in POOLS.items())

    program = save(prog, tmp_path_factory.mktemp("pool") / "pool.mlpackage", ct.target.iOS16)
    x = _w(*X_POOL)
    return x, program.execute({"x": x})


def naive_pool(x, kind, kernel_sizes, strides, pad_type, pad=None, exclude_padding_from_average=False,
               ceil_mode=False):
    """Loop over output pixels; windows clipped to the padded input, padding never wins a max."""
    (kh, kw), (sh, sw) = kernel_sizes, strides
    h, w = x.shape[2:]
    if pad_type == "same":
        ph, pw = _same_pads(h, kh, sh, 1, False), _same_pads(w, kw, sw, 1, False)
    elif pad_type == "custom":
        ph, pw = (pad[0], pad[1]), (pad[2], pad[3])
    else:
        ph, pw = (0, 0), (0, 0)

    def out_size(n, k, s, p):
        if not ceil_mode:
            return (n + p[0] + p[1] - k) // s + 1
        o = -(-(n + p[0] + p[1] - k) // s) + 1
        return o - 1 if (o - 1) * s >= n + p[0] else o  # the last window must start inside the input

    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    out = np.zeros(x.shape[:2] + (ho, wo), np.float64)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * sh - ph[0], j * sw - pw[0]
            rows = [r for r in range(r0, r0 + kh) if 0 <= r < h]
            cols = [c for c in range(c0, c0 + kw) if 0 <= c < w]
            window = x[:, :, rows][:, :, :, cols]
            if kind == "max_pool":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                count = len(rows) * len(cols) if exclude_padding_from_average else kh * kw
                out[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return out


@pytest.mark.parametrize("name", list(POOLS))
def test_pool_matches_reference(pool_outputs, name):
    x, out = pool_outputs
    kind, args = POOLS[name]
    ref = naive_pool(x, kind, **args)
    assert out[name].shape == ref.shape
    np.testing.assert_allclose(out[name], ref, rtol=1e-5, atol=1e-6)
    if args["pad_type"] == "same":  # and TensorFlow's SAME pooling (average over the real pixels only)
        tf = _tf()
        fn = tf.nn.max_pool2d if kind == "max_pool" else tf.nn.avg_pool2d
        tref = np.transpose(np.asarray(fn(np.transpose(x, (0, 2, 3, 1)), args["kernel_sizes"], args["strides"],
                                          "SAME")), (0, 3, 1, 2))
        np.testing.assert_allclose(out[name], tref, rtol=1e-5, atol=1e-6)


# -- elementwise, shape, reductions, linear algebra ---------------------------------------------------------------
X_EW, Y_EW = (2, 3, 4, 5), (1, 3, 1, 5)
MAT, LIN_W, LIN_B = _w(5, 6), _w(7, 5), _w(7)
BN = {k: _w(3) for k in ("mean", "gamma", "beta")} | {"variance": np.abs(_w(3)) + 0.1}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def _softmax(x, axis):
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


ELEMENTWISE = {  # name: (builder on (x, y), reference on (x, y))
    "add": (lambda mb, x, y: mb.add(x=x, y=y), lambda x, y: x + y),
    "sub": (lambda mb, x, y: mb.sub(x=x, y=y), lambda x, y: x - y),
    "mul": (lambda mb, x, y: mb.mul(x=x, y=y), lambda x, y: x * y),
    "real_div": (lambda mb, x, y: mb.real_div(x=x, y=y), lambda x, y: x / y),
    "maximum": (lambda mb, x, y: mb.maximum(x=x, y=y), np.maximum),
    "minimum": (lambda mb, x, y: mb.minimum(x=x, y=y), np.minimum),
    "pow": (lambda mb, x, y: mb.pow(x=mb.abs(x=x), y=y), lambda x, y: np.abs(x) ** y),
    "sqrt": (lambda mb, x, y: mb.sqrt(x=mb.abs(x=x)), lambda x, y: np.sqrt(np.abs(x))),
    "rsqrt": (lambda mb, x, y: mb.rsqrt(x=mb.abs(x=x), epsilon=0.1), lambda x, y: 1 / np.sqrt(np.abs(x) + 0.1)),
    "exp": (lambda mb, x, y: mb.exp(x=x), lambda x, y: np.exp(x.astype(np.float64))),
    "tanh": (lambda mb, x, y: mb.tanh(x=x), lambda x, y: np.asarray(_tf().math.tanh(x))),
    "square": (lambda mb, x, y: mb.square(x=x), lambda x, y: x * x),
    "leaky_relu": (lambda mb, x, y: mb.leaky_relu(x=x, alpha=0.1),
                   lambda x, y: np.asarray(_tf().nn.leaky_relu(x, 0.1))),
    "reduce_sum": (lambda mb, x, y: mb.reduce_sum(x=x, axes=[1, 3]), lambda x, y: x.sum(axis=(1, 3))),
    "reduce_max": (lambda mb, x, y: mb.reduce_max(x=x, axes=[0], keep_dims=True), lambda x, y: x.max(0, keepdims=True)),
    "reduce_min": (lambda mb, x, y: mb.reduce_min(x=x), lambda x, y: x.min()),
    "clip": (lambda mb, x, y: mb.clip(x=x, alpha=-0.5, beta=0.7), lambda x, y: np.clip(x, -0.5, 0.7)),
    "relu": (lambda mb, x, y: mb.relu(x=x), lambda x, y: np.asarray(_tf().nn.relu(x))),
    "relu6": (lambda mb, x, y: mb.relu6(x=mb.mul(x=x, y=4.0)), lambda x, y: np.asarray(_tf().nn.relu6(x * 4))),
    "sigmoid": (lambda mb, x, y: mb.sigmoid(x=mb.mul(x=x, y=30.0)), lambda x, y: _sigmoid(x * 30)),
    "sigmoid_hard": (lambda mb, x, y: mb.sigmoid_hard(x=x, alpha=0.3, beta=0.4),
                     lambda x, y: np.clip(0.3 * x + 0.4, 0, 1)),
    # the hard-swish form the V3 conversion emits: x * relu6(x + 3) * (1/6)
    "hard_swish": (lambda mb, x, y: mb.mul(x=mb.mul(x=x, y=mb.relu6(x=mb.add(x=x, y=3.0))), y=1 / 6),
                   lambda x, y: np.asarray(_tf().nn.relu6(x + 3)) * x / 6),
    "silu": (lambda mb, x, y: mb.silu(x=x), lambda x, y: np.asarray(_tf().nn.silu(x))),
    "softmax": (lambda mb, x, y: mb.softmax(x=x, axis=1), lambda x, y: _softmax(x, 1)),
    "softmax_last": (lambda mb, x, y: mb.softmax(x=mb.mul(x=x, y=20.0)),
                     lambda x, y: np.asarray(_tf().nn.softmax(x * 20))),
    "reduce_mean_keep": (lambda mb, x, y: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True),
                         lambda x, y: x.mean(axis=(2, 3), keepdims=True)),
    "reduce_mean": (lambda mb, x, y: mb.reduce_mean(x=x, axes=[-1], keep_dims=False), lambda x, y: x.mean(-1)),
    "reshape": (lambda mb, x, y: mb.reshape(x=x, shape=[2, -1, 5]), lambda x, y: x.reshape(2, 12, 5)),
    "transpose": (lambda mb, x, y: mb.transpose(x=x, perm=[0, 2, 3, 1]), lambda x, y: x.transpose(0, 2, 3, 1)),
    "squeeze": (lambda mb, x, y: mb.squeeze(x=y, axes=[0, 2]), lambda x, y: y[0, :, 0]),
    "expand_dims": (lambda mb, x, y: mb.expand_dims(x=mb.squeeze(x=y, axes=[0]), axes=[1, -1]),
                    lambda x, y: y[0][:, None, ..., None]),
    "concat": (lambda mb, x, y: mb.concat(values=[x, mb.mul(x=x, y=2.0), x], axis=2),
               lambda x, y: np.concatenate([x, 2 * x, x], axis=2)),
    "concat_interleave": (lambda mb, x, y: mb.concat(values=[x, mb.mul(x=x, y=2.0)], axis=-3, interleave=True),
                          lambda x, y: np.stack([x, 2 * x], axis=2).reshape(2, 6, 4, 5)),
    "reshape_0": (lambda mb, x, y: mb.reshape(x=x, shape=[0, 0, -1, 1]), lambda x, y: x.reshape(2, 3, 20, 1)),
    "matmul": (lambda mb, x, y: mb.matmul(x=x, y=MAT), lambda x, y: x @ MAT),
    "matmul_t": (lambda mb, x, y: mb.matmul(x=MAT, y=x, transpose_x=True, transpose_y=True),
                 lambda x, y: MAT.T @ np.swapaxes(x, -1, -2)),
    "linear": (lambda mb, x, y: mb.linear(x=x, weight=LIN_W, bias=LIN_B), lambda x, y: x @ LIN_W.T + LIN_B),
    "batch_norm": (lambda mb, x, y: mb.batch_norm(x=x, epsilon=1e-3, **BN),
                   lambda x, y: np.asarray(_tf().nn.batch_normalization(
                       x, *(BN[k].reshape(1, 3, 1, 1) for k in ("mean", "variance", "beta", "gamma")), 1e-3))),
    "pad_constant": (lambda mb, x, y: mb.pad(x=x, pad=[1, 2, 0, 3], mode="constant", constant_val=1.5),
                     lambda x, y: np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 3)], constant_values=1.5)),
    "pad_reflect": (lambda mb, x, y: mb.pad(x=x, pad=[2, 1, 3, 0], mode="reflect"),
                    lambda x, y: np.asarray(_tf().pad(x, [(0, 0), (0, 0), (2, 1), (3, 0)], mode="REFLECT"))),
    "pad_replicate": (lambda mb, x, y: mb.pad(x=x, pad=[1, 0, 2, 2], mode="replicate"),
                      lambda x, y: np.pad(x, [(0, 0), (0, 0), (1, 0), (2, 2)], mode="edge")),
    # round: halves to even (MIL's value_inference is np.round), which x * 2 (x has exact halves) exercises
    "round": (lambda mb, x, y: mb.round(x=mb.mul(x=x, y=4.0)), lambda x, y: np.round(x * 4)),
    "floor": (lambda mb, x, y: mb.floor(x=mb.mul(x=x, y=4.0)), lambda x, y: np.asarray(_tf().math.floor(x * 4))),
    "ceil": (lambda mb, x, y: mb.ceil(x=mb.mul(x=x, y=4.0)), lambda x, y: np.asarray(_tf().math.ceil(x * 4))),
    "sign": (lambda mb, x, y: mb.sign(x=mb.round(x=x)), lambda x, y: np.sign(np.round(x))),
    "floor_div": (lambda mb, x, y: mb.floor_div(x=mb.mul(x=x, y=10.0), y=mb.add(x=y, y=0.0)),
                  lambda x, y: np.asarray(_tf().math.floordiv(x * 10, y))),
    "cast_fp16": (lambda mb, x, y: mb.cast(x=mb.cast(x=mb.mul(x=x, y=1000.3), dtype="fp16"), dtype="fp32"),
                  lambda x, y: (x * np.float32(1000.3)).astype(np.float16).astype(np.float32)),
}


@pytest.fixture(scope="module")
def elementwise_outputs(tmp_path_factory):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=X_EW), mb.TensorSpec(shape=Y_EW)], opset_version=ct.target.iOS16)
    def prog(x, y):
        return tuple(mb.identity(x=build(mb, x, y), name=name) for name, (build, _) in ELEMENTWISE.items())

    program = save(prog, tmp_path_factory.mktemp("ew") / "ew.mlpackage", ct.target.iOS16)
    x, y = _w(*X_EW), _w(*Y_EW) + np.float32(3)  # y away from 0 (real_div)
    return x, y, program.execute({"x": x, "y": y})


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_op_matches_reference(elementwise_outputs, name):
    x, y, out = elementwise_outputs
    ref = np.asarray(ELEMENTWISE[name][1](x, y))
    assert out[name].shape == ref.shape and out[name].dtype == np.float32
    np.testing.assert_allclose(out[name], ref, rtol=2e-6, atol=2e-6)


# -- quantisation ops ----------------------------------------------------------------------------------------------
def test_quantize_dequantize_round_half_to_even_and_saturate(tmp_path):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    scales = np.array([0.125, 0.25, 0.5], np.float32)
    zps = np.array([128, 100, 3], np.uint8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 6))], opset_version=ct.target.iOS17)
    def prog(x):
        q8 = mb.quantize(input=x, scale=np.float32(0.125), zero_point=np.int8(3), output_dtype="int8", name="q8")
        qc = mb.quantize(input=x, scale=scales, zero_point=zps, axis=1, output_dtype="uint8", name="qc")
        return (mb.dequantize(input=q8, scale=np.float32(0.125), zero_point=np.int8(3), name="dq8"),
                mb.dequantize(input=qc, scale=scales, zero_point=zps, axis=1, name="dqc"))

    program = save(prog, tmp_path / "q.mlpackage", ct.target.iOS17)
    # exact halves of the step (0.125 * (k + 0.5)) and values far outside the int8 range
    x = (0.125 * (RNG.integers(-40, 40, size=(1, 3, 4, 6)) + 0.5)).astype(np.float32)
    x[0, 0, 0, :2] = [100.0, -100.0]
    values = program.execute({"x": x}, keep_intermediates=True)
    q8 = np.clip(np.rint(x / 0.125) + 3, -128, 127)
    qc = np.clip(np.rint(x / scales.reshape(1, 3, 1, 1)) + zps.reshape(1, 3, 1, 1), 0, 255)
    assert values["q8"].dtype == np.int8 and values["qc"].dtype == np.uint8
    np.testing.assert_array_equal(values["q8"], q8)
    np.testing.assert_array_equal(values["qc"], qc)
    assert np.any(np.abs(x / 0.125 - np.trunc(x / 0.125)) == 0.5)  # halves are in the test: they round to even
    np.testing.assert_array_equal(values["dq8"], ((q8 - 3) * 0.125).astype(np.float32))
    np.testing.assert_allclose(values["dqc"], (qc - zps.reshape(1, 3, 1, 1)) * scales.reshape(1, 3, 1, 1))


def test_round_takes_halves_to_even_like_mil_and_tensorflow(tmp_path):
    """MIL ``round`` (what coremltools makes of a FakeQuant op: clip, sub, real_div, round, mul, add): halves to
    even, as coremltools' own value_inference (np.round) and TensorFlow's Round compute it; not half away from
    zero (C's round) nor half up (FakeQuant's floor(x + 0.5))."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(8,))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.round(x=x, name="r")

    program = save(prog, tmp_path / "round.mlpackage", ct.target.iOS16)
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -3.7], np.float32)
    got = program.execute({"x": x})["r"]
    np.testing.assert_array_equal(got, [-2, -2, -0, 0, 2, 2, 0, -4])
    np.testing.assert_array_equal(got, np.asarray(_tf().math.round(x)))


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_constexpr_weights_dequantise_into_the_conv(tmp_path, target):
    """W8's weight ops: constexpr_affine_dequantize (iOS16) and constexpr_blockwise_shift_scale (iOS18), per
    output channel; the conv then runs on (q - zero_point) * scale."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    q = RNG.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    scale = np.array([0.01, 0.02, 0.005, 0.03], np.float32)
    zp = np.array([0, 3, -2, 1], np.int8)
    shape = (-1, 1, 1, 1)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=getattr(ct.target, target))
    def prog(x):
        if target == "iOS16":
            w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=0, name="w")
        else:
            w = mb.constexpr_blockwise_shift_scale(data=q, scale=scale.reshape(shape), offset=zp.reshape(shape),
                                                   name="w")
        return mb.conv(x=x, weight=w, pad_type="same", name="y")

    program = save(prog, tmp_path / "w.mlpackage", getattr(ct.target, target))
    weight = (q.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
    np.testing.assert_allclose(program.constants["w"], weight, rtol=1e-6)
    x = _w(1, 3, 8, 8)
    np.testing.assert_allclose(program.execute({"x": x})["y"], tf_conv(x, weight, pad_type="same"),
                               rtol=1e-5, atol=1e-5)


# -- fp16 ------------------------------------------------------------------------------------------------------------
def test_fp16_ops_round_each_result_like_fp16(tmp_path):
    """An fp16 program: every op's result is rounded to fp16 (NumPy's float16 arithmetic does the same: compute,
    then round), so x + 1 loses x's low bits, x * x overflows to inf, and chains round at each step."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec(shape=(64,), dtype=types.fp16)], opset_version=ct.target.iOS16)
    def prog(x):
        one, third = np.float16(1), np.float16(1 / 3)
        return (mb.add(x=x, y=one, name="plus1"), mb.mul(x=x, y=x, name="square"),
                mb.mul(x=mb.mul(x=x, y=third), y=np.float16(3), name="chain"),
                mb.sigmoid(x=x, name="sig"))

    program = save(prog, tmp_path / "h.mlpackage", ct.target.iOS16)
    assert program.precision == "fp16"
    x = np.concatenate([np.linspace(-8, 8, 48), [2049, 4097, 300, -300, 65504, 1e-3, 7e-6, 3e-7, 1023.7, 0.1,
                                                  2.5e4, -2.5e4, 333, 0.3, 6.1e-5, 1]]).astype(np.float16)
    out = program.execute({"x": x})
    with np.errstate(over="ignore"):
        expect = {"plus1": x + np.float16(1), "square": x * x,
                  "chain": (x * np.float16(1 / 3)) * np.float16(3),
                  "sig": (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float16)}
    for name, ref in expect.items():
        assert out[name].dtype == np.float16
        np.testing.assert_array_equal(out[name], ref, err_msg=name)
    x32 = x.astype(np.float32)
    assert np.isinf(out["square"]).sum() >= 4  # 300^2, 65504^2, 2.5e4^2 overflow fp16's 65504
    assert np.any(out["plus1"].astype(np.float32) != x32 + 1)  # 2049 + 1, 4097 + 1 round
    assert np.any(out["chain"].astype(np.float32) != (x32 / 3) * 3)


def test_round_fp16_is_numpys_float16_cast_bit_for_bit():
    bits = np.random.default_rng(1).integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.996, 65520, 2**-24, 2**-25,
                         3 * 2**-26, 2**-14, 2**-14 - 2**-25, 1 + 2**-11, 1 + 3 * 2**-11], np.float32)
    x = np.concatenate([bits.view(np.float32), specials, -specials])
    with np.errstate(all="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    got = round_fp16(x)
    same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref)) | ((got == 0) & (ref == 0))
    assert same.all(), x[~same][:5]


# -- image input, classifier, intermediates, unknown ops -----------------------------------------------------------
def test_bgr_image_input_scale_bias_and_classifier(tmp_path):
    """ImageType(BGR, scale, bias): the executor hands the program BGR pixel values as floats; the scale/bias
    ops then run; classify gives the label and the {label: value} dict in label order."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 5))], opset_version=ct.target.iOS16)
    def prog(img):
        return mb.reduce_mean(x=img, axes=[2, 3], keep_dims=False, name="means")

    labels = ["first", "second", "third"]
    program = save(prog, tmp_path / "img.mlpackage", ct.target.iOS16, pass_pipeline=ct.PassPipeline.DEFAULT,
                   inputs=[ct.ImageType(name="img", shape=(1, 3, 4, 5), scale=0.5, bias=[-1.0, 20.0, -3.0],
                                        color_layout=ct.colorlayout.BGR)],
                   classifier_config=ct.ClassifierConfig(labels))
    assert program.inputs[0].image is not None and program.inputs[0].image.color_space == "BGR"
    assert [op.type for op in program.ops][:2] == ["mul", "add"]  # the image scale/bias are program ops
    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 10, 60  # R, G, B
    out = program.execute({"img": rgb})
    expect = np.array([60 * 0.5 - 1, 10 * 0.5 + 20, 200 * 0.5 - 3])  # channels B, G, R
    assert list(out["classLabel_probs"]) == labels
    np.testing.assert_allclose(program.output_array(out)[0], expect, rtol=1e-3)
    assert out["classLabel"] == "third" and program.labels == labels


def test_execute_many_batches_a_batch_agnostic_program_and_not_one_written_for_batch_1(tmp_path):
    """execute_many runs a chunk as one batch only when the program allows it: a classifier that reduces per image
    batches (same answers as image by image); one that reshapes to a fixed (1, ...) cannot, and runs image by
    image, with the same answers, never a mixed-up batch."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 5))], opset_version=ct.target.iOS16)
    def per_image(img):
        return mb.reduce_mean(x=img, axes=[2, 3], keep_dims=False, name="means")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 5))], opset_version=ct.target.iOS16)
    def batch_one(img):
        flat = mb.reshape(x=img, shape=[1, 60])
        return mb.reduce_max(x=mb.reshape(x=flat, shape=[1, 3, 20]), axes=[2], keep_dims=False, name="maxes")

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (11, 4, 5, 3), dtype=np.uint8)
    for name, prog, batchable in (("per_image", per_image, True), ("batch_one", batch_one, False)):
        program = save(prog, tmp_path / f"{name}.mlpackage", ct.target.iOS16, pass_pipeline=ct.PassPipeline.DEFAULT,
                       inputs=[ct.ImageType(name="img", shape=(1, 3, 4, 5))],
                       classifier_config=ct.ClassifierConfig(["a", "b", "c"]))
        alone = np.concatenate([program.output_array(program.execute({"img": p[None]})) for p in pixels])
        chunks = list(program.execute_many(pixels, batch=4))
        together = np.concatenate([program.output_array(values) for _, _, values in chunks])
        assert program._batchable is batchable
        assert [(a, b) for a, b, _ in chunks] == ([(0, 4), (4, 8), (8, 11)] if batchable else
                                                  [(i, i + 1) for i in range(11)])
        np.testing.assert_allclose(together, alone, rtol=1e-6)
        first = chunks[0][2]["classLabel"]  # a batch answers a label per image; one image, its label
        assert first == ([program.labels[i] for i in alone[:4].argmax(1)] if batchable else
                         program.labels[int(alone[0].argmax())])


def test_keep_intermediates_gives_every_op_output_in_order(tmp_path):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 6, 6))], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.conv(x=x, weight=_w(3, 2, 3, 3), pad_type="same", name="conv1")
        h = mb.relu(x=h, name="act1")
        return mb.reduce_mean(x=h, axes=[2, 3], name="pooled")

    program = save(prog, tmp_path / "k.mlpackage", ct.target.iOS16)
    x = _w(1, 2, 6, 6)
    values = program.execute({"x": x}, keep_intermediates=True)
    assert list(values) == ["x", "conv1", "act1", "pooled"]
    assert [(op.type, op.outputs) for op in program.ops] == [
        ("conv", ["conv1"]), ("relu", ["act1"]), ("reduce_mean", ["pooled"])]
    assert program.ops[1].inputs["x"] == ["conv1"]
    np.testing.assert_array_equal(values["act1"], np.maximum(values["conv1"], 0))
    np.testing.assert_allclose(values["conv1"], tf_conv(x, program.constants[program.ops[0].inputs["weight"][0]],
                                                        pad_type="same"), rtol=1e-5, atol=1e-5)
    assert list(program.execute({"x": x})) == ["pooled"]


def test_unknown_op_is_refused_by_name(tmp_path):
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    from edgeship.errors import UserError
    from edgeship.runtimes.runner import Unavailable
    from edgeship.runtimes.coreml_reference import CoreMLReferenceRunner

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.relu(x=mb.erf(x=x, name="the_erf"), name="y")

    path = tmp_path / "erf.mlpackage"
    with pytest.raises(UnsupportedOp, match=r"op 'erf' \(named 'the_erf'\)") as info:
        save(prog, path, ct.target.iOS16)
    assert isinstance(info.value, UserError) and (info.value.op_type, info.value.op_name) == ("erf", "the_erf")
    from edgeship.models.spec import Preprocessing

    with pytest.raises(Unavailable, match=r"coreml-reference cannot run it: .*'erf'"):
        CoreMLReferenceRunner(path, Preprocessing()).open()
