"""Portable int8 (issue 11): the static check bounds every 16-bit pair sum and int32 accumulator each known CPU
kernel path can form; edgeship's int8 files are safe on all of them (the ONNX stored U8U8, the same numbers); a
file built to saturate is caught by the check, and by the validator's two-kernel-path gate where this CPU runs the
saturating kernel. A test of ISA-specific behaviour says which ISA it needs and skips elsewhere."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeship.errors import ConversionError
from edgeship.machine import KernelFamily, describe_machine
from edgeship.quantize.portability import (INT16_MAX, KERNEL_PATHS, Layer, check_layers, check_onnx, check_tflite,
                                           ensure_portable, weights_as_u8u8)
from edgeship.types import Layout

VPMADDUBSW_FAMILIES = {KernelFamily.X86_AVX2.value, KernelFamily.X86_AVX512.value, KernelFamily.X86_SSE41.value}
THIS_CPU = describe_machine().int8_kernel_family


def _verdict(report, instruction: str):
    (v,) = [v for v in report.verdicts if instruction in v.path.instruction]
    return v


def test_pair_bound_by_hand():
    """One output channel [127, 90, -3, 0] over uint8 input: VPMADDUBSW can pair 255*127 + 255*90 = 55335;
    ARM's u8s8 kernels flip activations to [-128, 127]: -128*127 - 128*90 = -27776 fits."""
    layer = Layer("conv", np.array([[127, 90, -3, 0]], np.int8), "u8", "s8")
    report = check_layers([layer], "onnxruntime")
    avx2 = _verdict(report, "VPMADDUBSW")
    assert (avx2.safe, avx2.worst, avx2.limit, avx2.layer) == (False, 55335, INT16_MAX, "conv")
    arm = _verdict(report, "SMULL+SMLAL")
    assert arm.safe and arm.worst == 27775  # -27776 is in range: |neg| - 1
    assert not report.safe and report.unsafe == [avx2]
    # the accumulator: K=4 products of 255*127 at most
    assert _verdict(report, "VPDPBUSDS").worst == 4 * 255 * 127


def test_reduce_range_weights_fit_vpmaddubsw():
    """ORT's documented remedy: 7-bit weights in [-64, 64) keep every pair within int16 (2*255*64 = 32640)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-64, 64, size=(32, 288)).astype(np.int8)
    w[:, :2] = -64  # the worst pair present
    assert _verdict(check_layers([Layer("c", w, "u8", "s8")], "onnxruntime"), "VPMADDUBSW").safe


def test_neon_mlal_needs_weights_above_minus_128():
    """XNNPACK's int8 NEON kernels without dot-product add two s8*s8 products in an int16 lane: (-128)*(-128) twice
    wraps, which TFLite's [-127, 127] weight range rules out."""
    ok = Layer("fc", np.array([[-127, -127, 5]], np.int8), "s8", "s8")
    bad = Layer("fc", np.array([[-128, -128, 5]], np.int8), "s8", "s8")
    assert check_layers([ok], "litert").safe
    report = check_layers([bad], "litert")
    (v,) = report.unsafe
    assert "arm64 NEON without dot-product" in v.path.isa and v.worst == 32768


def test_every_runtime_and_encoding_has_x86_and_arm64_paths():
    isas = {(p.runtime, p.operands): [] for p in KERNEL_PATHS}
    for p in KERNEL_PATHS:
        isas[(p.runtime, p.operands)].append(p.isa)
    for key in [("onnxruntime", "u8s8"), ("onnxruntime", "u8u8"), ("litert", "s8s8")]:
        names = " ".join(isas[key])
        assert "x86" in names and "arm64" in names, key
    assert all(p.source and p.instruction for p in KERNEL_PATHS)


def test_default_files_are_safe_on_every_kernel_path(make):
    tfl, onx = make()
    onnx_report, tflite_report = check_onnx(onx), check_tflite(tfl.read_bytes())
    assert onnx_report.safe and onnx_report.operands == ["u8u8"] and onnx_report.layers == 53
    assert tflite_report.safe and tflite_report.operands == ["s8s8"] and tflite_report.layers == 53
    ensure_portable(onnx_report, "demo")  # does not raise
    assert {v.path.runtime for v in onnx_report.verdicts} == {"onnxruntime"}
    assert any(v.path.pairs_16bit for v in tflite_report.verdicts)  # the NEON mlal bound was checked, and holds


def test_a_file_built_to_saturate_is_named_and_refused(make):
    """The TFLite's int8 weights kept as they are (u8s8): full-range per-channel weights with ReLU6 outputs at zero
    point 0 can pair 255*127 + 255*127 on VPMADDUBSW."""
    _, onx = make(portable=False)
    report = check_onnx(onx)
    (v,) = report.unsafe
    assert "VPMADDUBSW" in v.path.instruction and v.worst == 2 * 255 * 127 and v.layer
    with pytest.raises(ConversionError) as e:
        ensure_portable(report, "the int8 onnx file")
    message = str(e.value)
    assert "\n" not in message and v.layer in message and "16-bit pair sums" in message and "VPMADDUBSW" in message


def test_u8u8_reencoding_is_exact(make):
    """w + 128 with zero point + 128: every weight dequantises to the same float, bit for bit."""
    _, onx = make(portable=False)
    model = onnx.load(str(onx))
    before = _dequantised_weights(model)
    assert weights_as_u8u8(model) == 53
    after = _dequantised_weights(model)
    assert before.keys() == after.keys() and len(before) == 53
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert check_onnx(model).safe
    assert weights_as_u8u8(model) == 0  # nothing left to re-encode


def _dequantised_weights(model) -> dict[str, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2:
            w, s, z = (inits[k] for k in n.input[:3])
            shape = (-1,) + (1,) * (w.ndim - 1) if np.ndim(s) else ()
            out[n.input[0]] = (w.astype(np.float32) - np.reshape(z, shape).astype(np.float32)) * np.reshape(s, shape)
    return out


# -- the validator's two kernel paths ------------------------------------------------------------------------------


def _wrapped_bias(src, dst) -> None:
    """A file whose fused int8 kernels compute another number than its unfused graph on every CPU: the classifier's
    int32 bias at INT32_MAX - 1000, so the int32 accumulator wraps in MLAS's requantisation (a plain int32 add,
    onnxruntime/core/mlas/lib/requantize.cpp) while the unfused graph adds it in float."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    (gemm,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    bias = producer[gemm.input[2]].input[0]
    b = numpy_helper.to_array(inits[bias]).copy()
    b[:] = np.iinfo(np.int32).max - 1000
    inits[bias].CopyFrom(numpy_helper.from_array(b, bias))
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def two_paths(make, tmp_path_factory):
    """One validation of: the default int8 TFLite and ONNX, the wrapped-bias ONNX and the u8s8 ONNX."""
    from edgeship.validate import validate

    tfl, onx = make()
    _, u8s8 = make(portable=False)
    wrapped = tmp_path_factory.mktemp("planted") / "wrapped_bias.onnx"
    _wrapped_bias(onx, wrapped)
    report = validate([tfl, onx, wrapped, u8s8], iterations=2, warmup=1, progress=False)
    return dict(zip(["tflite", "onnx", "wrapped", "u8s8"], report.artifacts))


def test_default_files_pass_both_kernel_paths(two_paths):
    for key, path_name in (("tflite", "litert-reference"), ("onnx", "onnxruntime-unfused")):
        r = two_paths[key]
        assert r.status.value == "passed", r.reason
        assert r.kernel_path.startswith(path_name) and r.kernel_path_samples == 360
        gates = {g.name: g for g in r.gates}
        assert gates["kernel_path_sqnr_db"].passed and "kernel_path_top1_agreement" not in gates  # reported only
        assert r.metrics.kernel_path_top1_agreement >= 0.99 and r.metrics.kernel_path_sqnr_db >= 20
    # ORT's two paths round alike on most values; LiteRT's reference kernels requantise differently
    assert two_paths["onnx"].metrics.kernel_path_equal_values > two_paths["tflite"].metrics.kernel_path_equal_values


def test_the_kernel_path_gate_catches_a_planted_disagreement(two_paths, make, tmp_path):
    r = two_paths["wrapped"]
    assert r.status.value == "failed"
    failed = {g.name for g in r.gates if not g.passed}
    assert "kernel_path_sqnr_db" in failed, r.gates
    assert "onnxruntime-unfused" in r.reason and THIS_CPU in r.reason
    # the static check sees it too: the bias alone leaves no room in the int32 accumulator
    _, onx = make()
    _wrapped_bias(onx, tmp_path / "w.onnx")
    (v, *_) = check_onnx(tmp_path / "w.onnx").unsafe
    assert not v.path.pairs_16bit and v.worst > np.iinfo(np.int32).max


@pytest.mark.skipif(THIS_CPU not in VPMADDUBSW_FAMILIES,
                    reason=f"needs an x86 CPU without VNNI (VPMADDUBSW kernels); this one: {THIS_CPU}")
def test_the_old_encoding_fails_the_kernel_path_gate_where_vpmaddubsw_saturates(two_paths):
    """Measured on an AVX2-only EPYC: 3.4 dB and 87 % top-1 between ORT's fused and unfused paths."""
    r = two_paths["u8s8"]
    assert r.status.value == "failed"
    assert {"kernel_path_sqnr_db"} <= {g.name for g in r.gates if not g.passed}
    assert r.metrics.kernel_path_sqnr_db < 12


@pytest.mark.skipif(THIS_CPU in VPMADDUBSW_FAMILIES or THIS_CPU == KernelFamily.UNKNOWN.value,
                    reason=f"needs a CPU whose u8s8 kernels add into int32 (VNNI, AMX, arm64); this one: {THIS_CPU}")
def test_the_old_encoding_agrees_across_paths_where_nothing_saturates(two_paths):
    """The same u8s8 file is right on a VNNI machine: the failure above is the CPU's, which is why edgeship
    checks files statically instead of trusting the machine it happens to run on."""
    assert two_paths["u8s8"].metrics.kernel_path_sqnr_db >= 20


def test_layout_does_not_change_the_verdict(make):
    assert check_onnx(make(layout=Layout.NCHW)[1]).safe
