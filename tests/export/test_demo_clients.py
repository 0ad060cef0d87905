"""The demo model's files in the clients that will run them: MediaPipe Tasks on Android/iOS/Python (here,
Python), ONNX Runtime with an NCHW input, fp16 TFLite, and Core ML on macOS."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.models.loading import load_model
from edgeship.types import Format
from tests.conftest import macos_only


@pytest.fixture(scope="module")
def demo(demo_export, demo_heldout):
    """Every float file of the demo (the session's one export, ``demo_export`` in conftest.py)."""
    images, truth, labels = demo_heldout
    loaded = load_model()
    result = demo_export(formats=list(Format), precisions=["fp32", "fp16"])
    keras_top1 = np.asarray(loaded.keras_model(loaded.spec.preprocessing.apply(images))).argmax(1)
    return loaded, result, images, truth, keras_top1


def _path(result, fmt, precision):
    (rec,) = [a for a in result.manifest.artifacts if a.format == fmt and a.precision == precision]
    return result.out_dir / rec.path


def test_keras_reference_is_accurate(demo):
    _, _, _, truth, keras_top1 = demo
    assert (keras_top1 == truth).mean() >= 0.9


def test_mediapipe_image_classifier_names_the_keras_top1(demo):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    loaded, result, images, _, keras_top1 = demo
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(_path(result, "tflite", "fp32"))),
                                     max_results=1)
    with ImageClassifier.create_from_options(options) as classifier:
        for image, want in zip(images, keras_top1):
            got = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            category = got.classifications[0].categories[0]
            assert category.category_name == loaded.spec.labels[want]
            assert category.index == want


def test_fp16_tflite_agrees_on_top1(demo):
    from ai_edge_litert.interpreter import Interpreter

    loaded, result, images, _, keras_top1 = demo
    path = _path(result, "tflite", "fp16")
    assert path.stat().st_size < 0.6 * _path(result, "tflite", "fp32").stat().st_size
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = loaded.spec.preprocessing.apply(images)
    top1 = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        top1.append(int(interp.get_tensor(out["index"]).argmax()))
    assert np.array_equal(top1, keras_top1)


def test_onnx_nchw_layout(demo, demo_onnx_nchw):
    import onnxruntime as ort

    loaded, _, images, _, keras_top1 = demo
    result = demo_onnx_nchw
    (rec,) = result.manifest.artifacts
    assert rec.options["layout"] == "nchw" and rec.path.endswith("_nchw.onnx")
    sess = ort.InferenceSession(str(result.out_dir / rec.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 96, 96]
    x = np.transpose(loaded.spec.preprocessing.apply(images), (0, 3, 1, 2))
    (logits,) = sess.run(None, {"image": np.ascontiguousarray(x)})
    assert np.array_equal(logits.argmax(1), keras_top1)


def test_coreml_fp32_on_request(demo):
    import coremltools as ct

    _, result, _, _, _ = demo
    spec = ct.utils.load_spec(str(_path(result, "coreml", "fp32")))
    fp16 = ct.utils.load_spec(str(_path(result, "coreml", "fp16")))
    casts = lambda s: sum(op.type == "cast" for f in s.mlProgram.functions.values()  # noqa: E731
                          for b in f.block_specializations.values() for op in b.operations)
    assert casts(fp16) > casts(spec)  # the fp16 program casts its input down and its output back up


@macos_only
def test_coreml_predicts_the_keras_top1_on_macos(demo):
    import coremltools as ct
    from PIL import Image

    loaded, result, images, _, keras_top1 = demo
    for precision in ("fp32", "fp16"):
        mlmodel = ct.models.MLModel(str(_path(result, "coreml", precision)))
        got = [mlmodel.predict({"image": Image.fromarray(im)})["classLabel"] for im in images]
        agree = np.mean([g == loaded.spec.labels[k] for g, k in zip(got, keras_top1)])
        assert agree >= (1.0 if precision == "fp32" else 0.95)
