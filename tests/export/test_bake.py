"""--bake-preprocessing (edgeship.models.bake): a per-channel mean/std model and a BGR model, each made from the
trained demo by code, give Keras' answers in MediaPipe's ImageClassifier once baked; unbaked, MediaPipe refuses the
per-channel file and the export says so."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeship.export import export
from edgeship.models.bake import LAYER_NAME, bake_preprocessing
from edgeship.models.loading import DEMO_DIR, declare_preprocessing, load_model
from edgeship.models.spec import Preprocessing

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # torchvision's, in 0-255 pixel units
IMAGENET_STD = (58.395, 57.12, 57.375)


def _declared_like(k, demo, pre: Preprocessing, name: str):
    """A model that takes ``pre.apply(rgb)`` and answers what the demo answers on ``rgb``: the demo behind a 1x1
    conv that turns ``pre``'s input back into the demo's own ``(x - 127.5) / 127.5`` of RGB."""
    w, b = np.zeros((1, 1, 3, 3), np.float32), np.zeros(3, np.float32)
    for c in range(3):  # input channel c holds (rgb[src] - mean[c]) / std[c]
        src = 2 - c if pre.color.value == "bgr" else c
        w[0, 0, c, src] = pre.std[c] / 127.5
        b[src] = (pre.mean[c] - 127.5) / 127.5
    inp = k.Input((96, 96, 3))
    conv = k.layers.Conv2D(3, 1, name="adapter")
    x = conv(inp)
    conv.set_weights([w, b])
    return k.Model(inp, demo.keras_model(x), name=name)


@pytest.fixture(scope="module")
def made(tmp_path_factory, demo_heldout):
    """{kind: (path, declared Preprocessing)} and (images, the demo's top-1 on them)."""
    from edgeship._tf import keras

    k = keras()
    images, _, _ = demo_heldout
    demo = load_model()
    out = tmp_path_factory.mktemp("bake")
    shutil.copy(DEMO_DIR / "labels.txt", out / "labels.txt")
    kinds = {"perchannel": Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD), "bgr": Preprocessing(color="bgr")}
    paths = {}
    for kind, pre in kinds.items():
        model = _declared_like(k, demo, pre, kind)
        model.save(out / f"{kind}.keras")
        paths[kind] = (out / f"{kind}.keras", pre)
    pick = images[::2]
    want = np.asarray(demo.keras_model(demo.spec.preprocessing.apply(pick))).argmax(1)
    return paths, pick, want


def _load(path, pre):
    loaded = load_model(path)
    declare_preprocessing(loaded, mean=pre.mean, std=pre.std, bgr=pre.color.value == "bgr")
    return loaded


def _mediapipe_top1(path, images):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    with ImageClassifier.create_from_options(options) as classifier:
        return np.array([classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
                         .classifications[0].categories[0].index for im in images])


def test_declared_models_answer_like_the_demo(made):
    paths, images, want = made
    for path, pre in paths.values():
        loaded = _load(path, pre)
        assert np.array_equal(np.asarray(loaded.keras_model(pre.apply(images))).argmax(1), want)


@pytest.fixture(scope="module")
def baked_perchannel(made, tmp_path_factory):
    """The per-channel model baked, exported to TFLite fp32 and Core ML, and quantised to int8 TFLite."""
    from edgeship.quantize import quantize

    paths, _, _ = made
    out = tmp_path_factory.mktemp("baked")
    loaded = bake_preprocessing(_load(*paths["perchannel"]))
    warnings = []
    result = export(loaded=loaded, formats=["tflite", "coreml"], out=out, progress=False, warn=warnings.append)
    q = quantize(loaded=loaded, formats=["tflite"], out=out, num_samples=16, progress=False, ptq="fast",
                 calibration=DEMO_DIR / "calibration")
    files = {"fp32": next(p for p in result.paths if p.suffix == ".tflite"),
             "int8": next(p for p in q.paths if p.suffix == ".tflite")}
    return loaded, out, files, warnings


def test_baked_model_begins_with_the_declared_preprocessing(made, baked_perchannel):
    paths, images, want = made
    loaded, _, _, warnings = baked_perchannel
    assert warnings == []  # nothing left for MediaPipe to refuse
    assert loaded.spec.preprocessing == Preprocessing.identity()
    assert loaded.spec.baked_preprocessing == paths["perchannel"][1]
    assert loaded.keras_model.layers[1].name == LAYER_NAME
    assert np.array_equal(np.asarray(loaded.keras_model(images.astype(np.float32))).argmax(1), want)


def test_baked_per_channel_tflite_gives_keras_answers_in_mediapipe(made, baked_perchannel):
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.runtimes.litert import LiteRTRunner

    _, images, want = made
    _, _, files, _ = baked_perchannel
    runner = LiteRTRunner(files["fp32"], Preprocessing()).open()
    assert runner.preprocessing == Preprocessing.identity()  # the metadata: mean 0, std 1, RGB
    runner.close()
    assert np.array_equal(_mediapipe_top1(files["fp32"], images), want)
    detail = Interpreter(model_path=str(files["int8"])).get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (1.0, 0)  # raw pixels as they are
    assert np.mean(_mediapipe_top1(files["int8"], images) == want) >= 0.9


def test_per_channel_tflite_warned_and_refused_by_mediapipe_unbaked(made, baked_perchannel, tmp_path):
    """Unbaked, the export warns in one line, and MediaPipe refuses a file whose metadata declares per-channel
    mean/std (the refusal is the metadata's: it is written here onto the baked graph, saving a conversion)."""
    from edgeship.export import _warn_mediapipe
    from edgeship.export.common import ModelInfo
    from edgeship.metadata.tflite import add_metadata
    from edgeship.types import Format

    paths, images, _ = made
    unbaked = _load(*paths["perchannel"])
    warnings = []
    _warn_mediapipe(unbaked, [Format.TFLITE], warnings.append)
    assert len(warnings) == 1 and "per-channel mean/std" in warnings[0] and "--bake-preprocessing" in warnings[0]
    _, _, files, _ = baked_perchannel
    path = tmp_path / "perchannel.tflite"
    path.write_bytes(add_metadata(files["fp32"].read_bytes(), unbaked.spec, ModelInfo("perchannel")))
    with pytest.raises(Exception, match="Per-channel image normalization is not available"):
        _mediapipe_top1(path, images[:1])


def test_baked_bgr_tflite_gives_keras_answers_in_mediapipe(made, tmp_path):
    paths, images, want = made
    loaded = bake_preprocessing(_load(*paths["bgr"]))
    assert loaded.spec.preprocessing == Preprocessing.identity()
    result = export(loaded=loaded, formats=["tflite"], out=tmp_path, progress=False, warn=pytest.fail)
    assert np.array_equal(_mediapipe_top1(result.paths[0], images), want)


def test_baked_files_validate_against_the_source_model(made, baked_perchannel, capsys):
    """The manifest records what was baked, so `edgeship validate` rebuilds the same reference from the source
    .keras; Core ML's image input is scale 1, bias 0, RGB (the reference executor feeds it so)."""
    from edgeship.cli import main

    _, images, _ = made
    _, out, _, _ = baked_perchannel
    np.savez(out / "data.npz", images=images)
    code = main(["validate", "--artifacts", str(out), "--data", str(out / "data.npz"), "--iterations", "2",
                 "--kernel-path-samples", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "coreml  fp16" in text and "tflite  int8" in text and "tflite  fp32" in text
