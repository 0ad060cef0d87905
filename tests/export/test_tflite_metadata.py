"""TFLite metadata: round trip, an independent reader, and MediaPipe Tasks ImageClassifier on a real model.

A tiny CNN is trained for a few seconds on scikit-learn's digits (8x8 scans, upscaled to 32x32 RGB) so the
MediaPipe checks run on a model whose predictions mean something. mediapipe is a test-only dependency.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import types
import warnings
import zipfile

import flatbuffers
import numpy as np
import pytest

from edgeship._tf import keras, silenced, tf
from edgeship.errors import UserError
from edgeship.export.common import ModelInfo
from edgeship.metadata.tflite import add_metadata, min_parser_version, read_metadata
from edgeship.metadata.third_party import tflite_metadata_schema_py_generated as md_fb
from edgeship.models.spec import ModelSpec, Preprocessing

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INFO = ModelInfo(
    name="Digits", description="Handwritten digit classifier (test)", version="0.3.1", author="edgeship tests",
    license="Apache-2.0",
)
SPEC = ModelSpec(name="digits_cnn", input_shape=(32, 32, 3), num_classes=10, labels=LABELS)
N_TRAIN = 1500


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 32, 32, 3) uint8 RGB images and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.repeat(np.repeat(d.images, 4, axis=1), 4, axis=2)  # 8x8 -> 32x32, nearest neighbour
    images = np.clip(images * 16.0, 0, 255).astype(np.uint8)  # 0-16 -> 0-255
    return np.ascontiguousarray(np.repeat(images[..., None], 3, axis=-1)), d.target


def _normalise(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) - 127.5) / 127.5


@pytest.fixture(scope="module")
def keras_model(digits):
    images, labels = digits
    k = keras()
    k.utils.set_random_seed(0)
    inp = k.Input((32, 32, 3))
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Flatten()(x)
    model = k.Model(inp, k.layers.Dense(10)(x))
    model.compile(optimizer=k.optimizers.Adam(3e-3),
                  loss=k.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(_normalise(images[:N_TRAIN]), labels[:N_TRAIN], epochs=5, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def float_tflite(keras_model) -> bytes:
    with silenced():
        return tf().lite.TFLiteConverter.from_keras_model(keras_model).convert()


@pytest.fixture(scope="module")
def quantised_tflite(keras_model, digits) -> dict[str, bytes]:
    """Full-integer models with uint8 and with int8 input/output."""
    images = _normalise(digits[0][:100])
    t = tf()
    out = {}
    for name, dtype in (("uint8", t.uint8), ("int8", t.int8)):
        conv = t.lite.TFLiteConverter.from_keras_model(keras_model)
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = dtype
        with silenced(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            out[name] = conv.convert()
    return out


@pytest.fixture(scope="module")
def with_metadata(float_tflite) -> bytes:
    return add_metadata(float_tflite, SPEC, INFO)


# --- helpers --------------------------------------------------------------------------------------------------


def _interpreter_outputs(model: bytes, feed: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for x in feed:
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(interp.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def _mediapipe_top1(model: bytes, images: np.ndarray, tmp_path, name: str) -> list:
    """MediaPipe Tasks ImageClassifier's top category for each uint8 RGB image, from a .tflite on disk."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    path = tmp_path / f"{name}.tflite"
    path.write_bytes(model)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        return [
            classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
            .classifications[0].categories[0]
            for im in images
        ]


def _without_normalisation(model: bytes) -> bytes:
    """The same model and labels.txt with the input's NormalizationOptions removed, rebuilt with mediapipe's schema."""
    from ai_edge_litert.tools import flatbuffer_utils
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mp_fb

    tflite = flatbuffer_utils.read_model_from_bytearray(model)
    entry = next(m for m in tflite.metadata if m.name == b"TFLITE_METADATA")
    buf = tflite.buffers[entry.buffer].data.tobytes()
    meta = mp_fb.ModelMetadataT.InitFromObj(mp_fb.ModelMetadata.GetRootAs(buf, 0))
    meta.subgraphMetadata[0].inputTensorMetadata[0].processUnits = None
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    tflite.buffers[entry.buffer].data = np.frombuffer(bytes(builder.Output()), np.uint8)
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(tflite)))
    with zipfile.ZipFile(io.BytesIO(model)) as src, zipfile.ZipFile(out, "a") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


# --- round trip -----------------------------------------------------------------------------------------------


def test_round_trip(with_metadata):
    got = read_metadata(with_metadata)
    assert {k: got[k] for k in ("name", "description", "version", "author", "license")} == {
        "name": "Digits", "description": "Handwritten digit classifier (test)", "version": "0.3.1",
        "author": "edgeship tests", "license": "Apache-2.0",
    }
    assert got["min_parser_version"] == "1.0.0"
    assert got["input"] == {
        "name": "image",
        "normalization": {"mean": [127.5] * 3, "std": [127.5] * 3},
        "color_space": "RGB",
        "stats": {"min": [-1.0] * 3, "max": [1.0] * 3},
    }
    assert got["output"] == {"name": "logits", "labels_file": "labels.txt"}
    assert got["labels"] == list(LABELS)
    # The .tflite is also a zip holding exactly the label file, stored uncompressed.
    with zipfile.ZipFile(io.BytesIO(with_metadata)) as zf:
        assert [(i.filename, i.compress_type) for i in zf.infolist()] == [("labels.txt", zipfile.ZIP_STORED)]


def test_round_trip_per_channel_bgr_probabilities(float_tflite):
    pre = Preprocessing(mean=(103.9, 116.8, 123.7), std=(57.4, 57.1, 58.4), color="bgr")
    spec = SPEC.replace(preprocessing=pre, outputs_probabilities=True, labels=tuple(f"class {i}" for i in range(10)))
    got = read_metadata(add_metadata(float_tflite, spec, INFO))
    norm = got["input"]["normalization"]
    np.testing.assert_allclose(norm["mean"], pre.mean, rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(norm["std"], pre.std, rtol=1e-6)
    np.testing.assert_allclose(got["input"]["stats"]["min"], [-m / s for m, s in zip(pre.mean, pre.std)], rtol=1e-6)
    np.testing.assert_allclose(got["input"]["stats"]["max"], [(255 - m) / s for m, s in zip(pre.mean, pre.std)],
                               rtol=1e-6)
    assert got["input"]["color_space"] == "UNKNOWN"  # the schema has no BGR
    assert got["output"]["name"] == "probability"
    assert got["labels"] == [f"class {i}" for i in range(10)]


def test_add_metadata_twice_replaces_and_is_reproducible(float_tflite, with_metadata):
    assert add_metadata(float_tflite, SPEC, INFO) == with_metadata
    other = ModelInfo("Other", "d", "2", "a", "MIT")
    twice = add_metadata(with_metadata, SPEC.replace(labels=tuple(LABELS[::-1])), other)
    got = read_metadata(twice)
    assert got["name"] == "Other" and got["labels"] == list(LABELS[::-1])
    from ai_edge_litert import schema_py_generated as tfl

    root = tfl.Model.GetRootAs(twice, 0)
    names = [root.Metadata(i).Name() for i in range(root.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    with zipfile.ZipFile(io.BytesIO(twice)) as zf:
        assert zf.namelist() == ["labels.txt"]


def test_read_metadata_without_metadata_raises(float_tflite):
    with pytest.raises(UserError, match="no metadata"):
        read_metadata(float_tflite)
    with pytest.raises(UserError, match="not a TFLite model"):
        read_metadata(b"\0" * 64)


def test_add_metadata_rejects_a_spec_that_contradicts_the_model(float_tflite):
    with pytest.raises(UserError, match="input"):
        add_metadata(float_tflite, SPEC.replace(input_shape=(224, 224, 3)), INFO)
    with pytest.raises(UserError, match="labels"):
        add_metadata(float_tflite, SPEC.replace(num_classes=3, labels=("a", "b", "c")), INFO)
    with pytest.raises(UserError, match="line break"):
        add_metadata(float_tflite, SPEC.replace(labels=("a\nb",) + LABELS[1:]), INFO)


def test_min_parser_version_follows_metadata_version_cc():
    def meta(**subgraph_fields) -> md_fb.ModelMetadataT:
        sg = md_fb.SubGraphMetadataT()
        for k, v in subgraph_fields.items():
            setattr(sg, k, v)
        m = md_fb.ModelMetadataT()
        m.subgraphMetadata = [sg]
        return m

    def tensor_with_file(file_type: int, version: str | None = None) -> md_fb.TensorMetadataT:
        t = md_fb.TensorMetadataT()
        t.associatedFiles = [md_fb.AssociatedFileT(name="f", type=file_type, version=version)]
        return t

    axis = md_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert min_parser_version(meta(outputTensorMetadata=[tensor_with_file(axis)])) == "1.0.0"
    assert min_parser_version(meta(outputTensorMetadata=[tensor_with_file(md_fb.AssociatedFileType.VOCABULARY)])) \
        == "1.0.1"
    assert min_parser_version(meta(inputProcessUnits=[])) == "1.1.0"  # present, even empty
    assert min_parser_version(meta(outputTensorGroups=[])) == "1.2.0"
    assert min_parser_version(meta(outputTensorMetadata=[tensor_with_file(axis, version="2")])) == "1.4.1"
    assert min_parser_version(meta(customMetadata=[], inputProcessUnits=[])) == "1.5.0"


# --- an independent reader ------------------------------------------------------------------------------------


@pytest.fixture
def mediapipe_metadata_module(monkeypatch):
    """mediapipe's metadata.py, whose MetadataDisplayer parses with the C++ flatbuffers library (via ctypes).

    The module imports the compiled ``_pywrap_metadata_version`` at the top, which mediapipe 1.2.2 does not ship;
    only the writer uses it, so an empty stand-in is enough for the displayer.
    """
    pkg = "mediapipe.tasks.cc.metadata.python"
    stub = types.ModuleType(f"{pkg}._pywrap_metadata_version")
    for name in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", pkg):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    monkeypatch.setattr(sys.modules[pkg], "_pywrap_metadata_version", stub, raising=False)
    return importlib.import_module("mediapipe.tasks.python.metadata.metadata")


def test_mediapipe_metadata_displayer_agrees(with_metadata, mediapipe_metadata_module):
    displayer = mediapipe_metadata_module.MetadataDisplayer.with_model_buffer(with_metadata)
    meta = json.loads(displayer.get_metadata_json())  # text generated by C++ flatbuffers from the .fbs schema
    assert (meta["name"], meta["version"], meta["author"], meta["license"], meta["min_parser_version"]) == (
        "Digits", "0.3.1", "edgeship tests", "Apache-2.0", "1.0.0")
    (subgraph,) = meta["subgraph_metadata"]
    (inp,) = subgraph["input_tensor_metadata"]
    assert inp["content"] == {"content_properties_type": "ImageProperties",
                              "content_properties": {"color_space": "RGB"}}
    assert inp["process_units"] == [{"options_type": "NormalizationOptions",
                                     "options": {"mean": [127.5] * 3, "std": [127.5] * 3}}]
    assert inp["stats"] == {"min": [-1.0] * 3, "max": [1.0] * 3}
    (out,) = subgraph["output_tensor_metadata"]
    assert out["content"]["content_properties_type"] == "FeatureProperties"
    assert [(f["name"], f["type"]) for f in out["associated_files"]] == [("labels.txt", "TENSOR_AXIS_LABELS")]
    assert displayer.get_packed_associated_file_list() == ["labels.txt"]
    assert displayer.get_associated_file_buffer("labels.txt").decode().splitlines() == list(LABELS)


# --- MediaPipe Tasks ImageClassifier --------------------------------------------------------------------------


def test_mediapipe_classifies_like_the_interpreter(with_metadata, float_tflite, digits, tmp_path):
    images, truth = digits[0][N_TRAIN:N_TRAIN + 40], digits[1][N_TRAIN:N_TRAIN + 40]
    logits = _interpreter_outputs(float_tflite, _normalise(images))
    cats = _mediapipe_top1(with_metadata, images, tmp_path, "digits")
    assert [c.category_name for c in cats] == [LABELS[i] for i in logits.argmax(1)]
    # MediaPipe normalised exactly as the metadata says: its score is the interpreter's top logit.
    np.testing.assert_allclose([c.score for c in cats], logits.max(1), atol=1e-3)
    assert np.mean([c.category_name == LABELS[t] for c, t in zip(cats, truth)]) >= 0.8


def test_mediapipe_uses_the_written_normalisation(float_tflite, digits, tmp_path):
    """Metadata saying x/255 (not the model's training normalisation) changes MediaPipe's input to exactly that."""
    images = digits[0][N_TRAIN:N_TRAIN + 10]
    spec = SPEC.replace(preprocessing=Preprocessing(mean=(0.0,) * 3, std=(255.0,) * 3))
    cats = _mediapipe_top1(add_metadata(float_tflite, spec, INFO), images, tmp_path, "unit_range")
    logits = _interpreter_outputs(float_tflite, images.astype(np.float32) / 255.0)
    assert [c.category_name for c in cats] == [LABELS[i] for i in logits.argmax(1)]
    np.testing.assert_allclose([c.score for c in cats], logits.max(1), atol=1e-3)


def test_mediapipe_refuses_models_without_usable_metadata(float_tflite, with_metadata, digits, tmp_path):
    image = digits[0][:1]
    with pytest.raises(Exception, match="requires specifying NormalizationOptions"):
        _mediapipe_top1(float_tflite, image, tmp_path, "no_metadata")
    stripped = _without_normalisation(with_metadata)
    assert read_metadata(stripped)["input"]["normalization"] is None
    assert read_metadata(stripped)["labels"] == list(LABELS)
    with pytest.raises(Exception, match="requires specifying NormalizationOptions"):
        _mediapipe_top1(stripped, image, tmp_path, "no_normalisation")
    per_channel = SPEC.replace(preprocessing=Preprocessing(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)))
    with pytest.raises(Exception, match="Per-channel image normalization is not available"):
        _mediapipe_top1(add_metadata(float_tflite, per_channel, INFO), image, tmp_path, "per_channel")
    bgr = SPEC.replace(preprocessing=Preprocessing(color="bgr"))
    with pytest.raises(Exception, match="Only RGB color space is supported"):
        _mediapipe_top1(add_metadata(float_tflite, bgr, INFO), image, tmp_path, "bgr")


def test_mediapipe_feeds_raw_pixels_to_uint8_input(quantised_tflite, digits, tmp_path):
    """uint8 input: MediaPipe ignores NormalizationOptions and feeds 0-255 pixels; the output is dequantised."""
    model = quantised_tflite["uint8"]
    tagged = add_metadata(model, SPEC, INFO)
    got = read_metadata(tagged)
    assert got["input"]["normalization"] == {"mean": [127.5] * 3, "std": [127.5] * 3}  # the float model's
    assert got["input"]["stats"] == {"min": [0.0], "max": [255.0]}

    images = digits[0][N_TRAIN:N_TRAIN + 20]
    q = _interpreter_outputs(model, images)  # raw pixels in
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(model_content=model).get_output_details()[0]["quantization"]
    cats = _mediapipe_top1(tagged, images, tmp_path, "uint8")
    for cat, row in zip(cats, q):
        assert cat.category_name == LABELS[cat.index]
        assert cat.index in np.flatnonzero(row == row.max())  # quantised scores can tie
        assert cat.score == pytest.approx((int(row.max()) - zero_point) * scale, abs=1e-5)


def test_mediapipe_refuses_int8_input(quantised_tflite, digits, tmp_path):
    tagged = add_metadata(quantised_tflite["int8"], SPEC, INFO)
    assert read_metadata(tagged)["input"]["stats"] == {"min": [-128.0], "max": [127.0]}
    with pytest.raises(Exception, match="Requested one of these types: uint8/float32, got INT8"):
        _mediapipe_top1(tagged, digits[0][:1], tmp_path, "int8")


# --- the model itself is untouched ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_interpreter_outputs_are_bit_identical(kind, float_tflite, quantised_tflite, digits):
    from ai_edge_litert.interpreter import Interpreter

    model = float_tflite if kind == "float" else quantised_tflite["uint8"]
    tagged = add_metadata(model, SPEC, INFO)
    images = digits[0][N_TRAIN:N_TRAIN + 20]
    feed = _normalise(images) if kind == "float" else images
    assert np.array_equal(_interpreter_outputs(model, feed), _interpreter_outputs(tagged, feed))

    def details(m: bytes) -> list:
        interp = Interpreter(model_content=m)
        return [(d["name"], d["shape"].tolist(), d["dtype"], d["quantization"])
                for d in interp.get_input_details() + interp.get_output_details()]

    assert details(model) == details(tagged)
