"""``edgeship quantize``: one calibration set for every format, recipes beside the files, the manifest, the
int8 ONNX computing with the int8 TFLite's parameters, and bad calibration input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgeship.cli import main
from edgeship.data import load_image_folder
from edgeship.errors import UserError
from edgeship.manifest import Manifest
from edgeship.models.loading import DEMO_DIR, load_model
from edgeship.quantize import quantize
from edgeship.quantize.calibration import load_calibration
from edgeship.types import Format, Precision


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    result = quantize(formats=["tflite", "onnx"], out=out, num_samples=64, progress=False)
    return out, result


def test_files_recipes_and_manifest(quantized):
    out, result = quantized
    manifest = Manifest.load(out)
    recs = {(a.format, a.precision) for a in manifest.artifacts}
    assert {(Format.TFLITE, Precision.INT8), (Format.ONNX, Precision.INT8)} <= recs
    for path, recipe_path in zip(result.paths, result.recipes):
        recipe = json.loads(recipe_path.read_text())
        assert recipe["calibration"]["count"] == 64 and len(recipe["calibration"]["sha256"]) == 64
        assert recipe["options"]["relu6_fixed"] is True and recipe["options"]["input_range"] == [-1.0, 1.0]
        sources = {p["range_source"] for p in recipe["tensors"].values()}
        assert {"fixed", "mse", "weights"} <= sources  # the default ptq="thorough": mse activation ranges
        options = recipe["options"]
        assert (options["ptq"], options["activation_ranges"], options["weight_rounding"],
                options["int8_bias_correction"]) == ("thorough", "mse", "adaptive", True)
        assert recipe["weight_rounding"]["images"] == 64 and recipe["int8_bias_correction"]["ops"] == 53
        # the static portability check, recorded: every kernel path of the file's runtime, all safe
        check = recipe["portability"]
        assert check["safe"] is True and check["layers"] == 53 and len(check["paths"]) >= 3
        assert all(p["safe"] and p["worst_case"] <= p["limit"] for p in check["paths"])
        assert check["operands"] == (["u8u8"] if path.suffix == ".onnx" else ["s8s8"])
    assert len(result.fixed_tensors) >= 35 and result.calibrated_tensors  # 35 ReLU6 outputs + the input


def test_uint8_tflite_input_matches_the_preprocessing(quantized):
    """MediaPipe feeds raw pixels to a uint8 input: scale and zero point must be the normalisation's."""
    from ai_edge_litert.interpreter import Interpreter

    out, result = quantized
    interp = Interpreter(model_path=str(result.paths[0]))
    d = interp.get_input_details()[0]
    assert d["dtype"] == np.uint8
    scale, zp = d["quantization"]
    assert scale == pytest.approx(2 / 255, rel=1e-6) and zp in (127, 128)


def test_onnx_int8_carries_the_tflite_parameters(quantized):
    """Same statistics, same scales: the ONNX's outputs equal the TFLite's (issue target: >= 99.9 % of values;
    measured on the demo: 100 % of 3,600 values; tests/quantize/test_onnx_int8.py checks all 360 images)."""
    import onnx
    from onnx import numpy_helper

    from edgeship.runtimes.litert import LiteRTRunner
    from edgeship.runtimes.onnxrt import OnnxRuntimeRunner

    out, result = quantized
    model = onnx.load(str(result.paths[1]))
    scales = {round(float(numpy_helper.to_array(i)), 9) for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and numpy_helper.to_array(i).size == 1}
    assert round(6 / 255, 9) in scales or any(abs(s - 6 / 255) < 1e-8 for s in scales)  # the ReLU6 scale
    loaded = load_model()
    images = load_image_folder(DEMO_DIR / "heldout", (96, 96), loaded.spec.labels).images[:60]
    tfl = LiteRTRunner(result.paths[0], loaded.spec.preprocessing).open().predict(images)
    ort = OnnxRuntimeRunner(result.paths[1], loaded.spec.preprocessing).open().predict(images)
    equal = np.mean(np.isclose(tfl, ort, rtol=0, atol=1e-6))
    assert equal >= 0.999, equal
    step = LiteRTRunner(result.paths[0], loaded.spec.preprocessing).open().output_quant.scale
    assert np.max(np.abs(tfl - ort)) <= 1.01 * step
    assert np.array_equal(tfl.argmax(1), ort.argmax(1))


def test_int8_agrees_with_float_on_heldout(quantized):
    from edgeship.validate.pipeline import validate

    out, _ = quantized
    report = validate([out], iterations=2, warmup=1, progress=False, kernel_path_samples=0)  # agreement, not portability
    for a in report.artifacts:
        assert a.precision == "int8"
        assert a.metrics.top1_agreement >= 0.99, a.name
        assert a.metrics.accuracy_top1_drop <= 0.005, a.name


def test_quantize_cli(capsys, tmp_path):
    assert main(["quantize", "--formats", "tflite", "--num-samples", "16", "--ptq", "fast", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "fixed without calibration" in printed and "edgeship_demo_int8.tflite" in printed
    assert "(--activation-ranges minmax)" in printed  # what the fast preset resolved to, not the unset flag (None)


def test_calibration_picks_are_deterministic_and_warn_when_short(tmp_path):
    spec = load_model().spec
    a = load_calibration(None, spec, num_samples=10, seed=3)
    b = load_calibration(None, spec, num_samples=10, seed=3)
    c = load_calibration(None, spec, num_samples=10, seed=4)
    assert a.sha256 == b.sha256 != c.sha256
    warnings = []
    small = load_calibration(None, spec, num_samples=500, warn=warnings.append)
    assert len(small.images) == 200 and "fewer than the 500" in warnings[0]


def test_bad_calibration_input(tmp_path):
    spec = load_model().spec
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_calibration(tmp_path / "empty", spec)
    nan = np.full((4, 96, 96, 3), np.nan, np.float32)
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(UserError, match="NaN"):
        load_calibration(tmp_path / "nan.npy", spec)
    np.save(tmp_path / "gray.npy", np.zeros((4, 96, 96, 1), np.uint8))
    with pytest.raises(UserError, match="RGB"):
        load_calibration(tmp_path / "gray.npy", spec)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "gray.png")  # grayscale: converted to RGB
    warnings = []
    cal = load_calibration(folder, spec, num_samples=2, warn=warnings.append)
    assert cal.images.shape == (1, 96, 96, 3) and any("broken.png" in w for w in warnings)
    (folder / "gray.png").unlink()
    with pytest.raises(UserError, match="no decodable"):
        load_calibration(folder, spec, num_samples=2, warn=warnings.append)


def test_per_layer_sqnr_report(quantized):
    """Every quantised activation against its float twin, beside each int8 file; the validator picks it up."""
    from edgeship.quantize.layers import worst
    from edgeship.validate.pipeline import validate

    out, result = quantized
    data = json.loads((out / (result.paths[0].name + ".layers.json")).read_text())
    sqnr = data["sqnr_db"]
    assert data["samples"] == 32 and len(sqnr) >= 60  # 52 convs' outputs, adds, pooling, logits
    assert all(v is None or -10 < v < 80 for v in sqnr.values())
    assert sqnr["Conv1_relu"] > 25  # the first layer has only the input's and its own rounding
    assert worst(result.layer_sqnr, 1)[0][1] < sqnr["Conv1_relu"]  # error accumulates downstream
    report = validate([result.paths[0]], iterations=1, warmup=0, progress=False, kernel_path_samples=0)
    assert report.artifacts[0].layer_sqnr and set(report.artifacts[0].layer_sqnr) == set(sqnr)


def test_a_model_without_relu6_says_the_fixed_mode_has_nothing_to_do(tmp_path):
    from edgeship._tf import keras

    k = keras()
    inp = k.Input((96, 96, 3))
    x = k.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(10)(x))
    from edgeship.models.loading import DEMO_DIR, DEMO_LABELS

    warnings = []
    result = quantize(model=model, labels=DEMO_LABELS, formats=["tflite"], out=tmp_path, num_samples=8, ptq="fast",
                      progress=False, warn=warnings.append, calibration=DEMO_DIR / "calibration")
    assert any("no ReLU6" in w and "nothing to do" in w for w in warnings)
    assert result.paths and result.calibrated_tensors


def test_tflite_dynamic_range_and_fp16_on_request(tmp_path):
    """w8 (dynamic range) and fp16 need no calibration; both keep float I/O and the MediaPipe metadata."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.validate import validate

    result = quantize(formats=["tflite", "onnx"], precisions=["w8", "fp16"], out=tmp_path, progress=False, ptq="fast")
    assert [p.name for p in result.paths] == ["edgeship_demo_w8.tflite", "edgeship_demo_fp16.tflite"]  # ONNX: int8 only
    types = {}
    for path in result.paths:
        interp = Interpreter(model_path=str(path))
        assert interp.get_input_details()[0]["dtype"] == np.float32
        types[path.name] = {d["dtype"] for d in interp.get_tensor_details()}
    assert np.int8 in types["edgeship_demo_w8.tflite"] and np.float16 in types["edgeship_demo_fp16.tflite"]
    assert {(a.format, a.precision) for a in Manifest.load(tmp_path).artifacts} == {
        (Format.TFLITE, Precision.W8), (Format.TFLITE, Precision.FP16)}
    report = validate([tmp_path], iterations=2, warmup=1, progress=False)
    assert report.passed, [a.reason for a in report.artifacts]


def test_a_precision_no_format_makes_is_refused(capsys, tmp_path):
    assert main(["quantize", "--formats", "onnx", "--precision", "fp16", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no format here is quantised to fp16: choose from onnx: int8" in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_onnx_from_ort_quantize_static_on_request(capsys, tmp_path, demo_export):
    """--onnx-method minmax: ONNX Runtime's own QDQ quantisation of the float ONNX export (exported on the way),
    recorded as such; it runs in the validator and agrees with float, but is not the .tflite's twin."""
    import onnx

    from edgeship.validate import validate

    assert main(["quantize", "--formats", "onnx", "--onnx-method", "minmax", "--num-samples", "32", "--ptq", "fast",
                 "--out", str(tmp_path)]) == 0
    assert "fixed without calibration" not in capsys.readouterr().out  # no int8 TFLite was calibrated for it
    path = tmp_path / "edgeship_demo_int8.onnx"
    recipe = json.loads((tmp_path / "edgeship_demo_int8.onnx.recipe.json").read_text())
    assert "quantize_static" in recipe["source"] and "minmax" in recipe["source"]
    assert not (tmp_path / "edgeship_demo_int8.onnx.layers.json").exists()  # the TFLite's report is not its own
    # ORT's full-range int8 weights could saturate VPMADDUBSW: the file is written U8U8, and says so
    assert recipe["portability"]["safe"] is True and recipe["portability"]["operands"] == ["u8u8"]
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "SpaceToDepth" not in ops
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # ORT's: float I/O
    assert {(a.format, a.precision) for a in Manifest.load(tmp_path).artifacts} == {
        (Format.ONNX, Precision.FP32), (Format.ONNX, Precision.INT8)}
    # the float ONNX exported on the way is the trained model's, though the int8 file starts from a bias-corrected
    # one (it was once exported while the correction was in force)
    from onnx import numpy_helper

    direct = demo_export(formats=["onnx"]).paths[0]  # export(formats=["onnx"]) of the demo (conftest.py)
    # (tf2onnx numbers its constants per process, so the two are compared as multisets of arrays, not by name)
    weights = [sorted((a.shape, a.dtype.str, a.tobytes()) for a in
                      (numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer))
               for p in (tmp_path / "edgeship_demo_fp32.onnx", direct)]
    assert weights[0] == weights[1]
    report = validate([path], iterations=2, warmup=1, progress=False, kernel_path_samples=0)
    assert report.artifacts[0].metrics.top1_agreement >= 0.97, report.artifacts[0].reason
    with pytest.raises(UserError, match="unknown --onnx-method 'kl'"):
        quantize(formats=["onnx"], onnx_method="kl", out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
