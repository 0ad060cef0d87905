"""Normalisation inside the graph (edgeship.models.innorm), found from every source format alike, and a
declaration on top of it refused (issue 13). The models are small and untrained: detection reads arithmetic, not
answers."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.cli import main
from edgeship.models.loading import load_model
from edgeship.models.spec import Preprocessing
from edgeship.types import ColorOrder

IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"


def _small(k, first, shape=(32, 32, 3), name="small"):
    inp = k.Input(shape)
    x = first(inp)
    x = k.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(x), name=name)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: path}: the four in-model normalisations users build, and a model without one."""
    from edgeship._tf import keras, silenced

    k = keras()
    k.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("innorm")
    augment_then_rescale = lambda x: k.layers.Rescaling(1 / 255.0)(k.layers.RandomFlip("horizontal")(  # noqa: E731
        k.layers.RandomRotation(0.1)(x)))
    built = {
        "preprocess_input": _small(k, k.applications.mobilenet_v2.preprocess_input),
        "caffe": _small(k, k.applications.resnet50.preprocess_input),
        "rescaling_after_augmentation": _small(k, augment_then_rescale),
        "normalization": _small(k, k.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 3100.0, 3200.0])),
        "none": _small(k, lambda x: x),
    }
    paths = {}
    for kind, model in built.items():
        paths[kind] = out / f"{kind}.keras"
        model.save(paths[kind])
    # Keras 3 cannot read back an .h5 holding op nodes (TrueDivide...), and Keras 2 writes preprocess_input as
    # TFOpLambda layers (the legacy loader's business): the .h5 case normalises with layers
    paths["rescaling_h5"] = out / "rescaling.h5"
    _small(k, k.layers.Rescaling(1 / 127.5, offset=-1.0)).save(paths["rescaling_h5"])
    paths["preprocess_input_savedmodel"] = out / "preprocess_input_savedmodel"
    with silenced():
        built["preprocess_input"].export(str(paths["preprocess_input_savedmodel"]))
    return paths


@pytest.mark.parametrize("kind, mean, std, color", [
    ("preprocess_input", (127.5,) * 3, (127.5,) * 3, ColorOrder.RGB),
    ("rescaling_h5", (127.5,) * 3, (127.5,) * 3, ColorOrder.RGB),
    ("preprocess_input_savedmodel", (127.5,) * 3, (127.5,) * 3, ColorOrder.RGB),
    ("caffe", IMAGENET_CAFFE_MEAN_BGR, (1.0,) * 3, ColorOrder.BGR),
    ("rescaling_after_augmentation", (0.0,) * 3, (255.0,) * 3, ColorOrder.RGB),
    ("normalization", (120.0, 110.0, 100.0), tuple(float(np.sqrt(v)) for v in (3000, 3100, 3200)), ColorOrder.RGB),
])
def test_in_graph_normalisation_is_found_and_preprocessing_set_to_identity(models, kind, mean, std, color):
    notes = []
    loaded = load_model(models[kind], echo=notes.append)
    found = loaded.in_graph
    assert found is not None, kind
    np.testing.assert_allclose(found.preprocessing.mean, mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(found.preprocessing.std, std, rtol=1e-4)
    assert found.preprocessing.color is color
    assert loaded.spec.preprocessing == Preprocessing.identity()
    assert loaded.spec.in_graph_normalisation and "identity" in notes[0] and len(notes) == 1
    assert "in_graph_normalisation" in loaded.spec.to_dict()  # recorded in the manifest


def test_model_without_normalisation_keeps_the_default(models):
    notes = []
    loaded = load_model(models["none"], echo=notes.append)
    assert loaded.in_graph is None and notes == []
    assert loaded.spec.preprocessing == Preprocessing()


def test_v3_include_preprocessing_found_in_its_savedmodel(tmp_path):
    """The V3 of the issue: detected as .keras (its Rescaling layer) but, before, not as the SavedModel that
    model.export() wrote from it. Both now read the same graph."""
    from edgeship._tf import keras, silenced

    k = keras()
    model = k.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4, minimalistic=True,
                                            include_preprocessing=True)
    with silenced():
        model.export(str(tmp_path / "v3"))
    for path in (tmp_path / "v3",):
        loaded = load_model(path, echo=lambda _: None)
        assert loaded.in_graph is not None, path
        np.testing.assert_allclose(loaded.in_graph.preprocessing.mean, (127.5,) * 3, rtol=1e-5)
        np.testing.assert_allclose(loaded.in_graph.preprocessing.std, (127.5,) * 3, rtol=1e-5)
        assert loaded.spec.preprocessing == Preprocessing.identity()


def _one_line_error(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_declared_normalisation_on_top_is_refused(models, capsys, tmp_path):
    code, err = _one_line_error(capsys, "export", "--model", str(models["preprocess_input"]), "--mean", "127.5",
                                "--std", "127.5", "--formats", "tflite", "--out", str(tmp_path))
    assert code == 2 and len(err) == 1, err
    assert "already normalises its input inside" in err[0] and "drop --mean/--std/--bgr" in err[0]
    assert not list(tmp_path.glob("*.tflite"))


def test_declared_bgr_on_a_graph_that_reverses_channels_is_refused(models, capsys, tmp_path):
    code, err = _one_line_error(capsys, "export", "--model", str(models["caffe"]), "--bgr", "--formats", "tflite",
                                "--out", str(tmp_path))
    assert code == 2 and len(err) == 1 and "reverses RGB to BGR inside" in err[0], err


def test_bgr_alone_on_a_graph_that_only_scales_is_allowed(models):
    """A model trained on BGR pixels that rescales inside: BGR is not a second normalisation."""
    from edgeship.models.loading import declare_preprocessing

    loaded = load_model(models["rescaling_after_augmentation"], echo=lambda _: None)
    declare_preprocessing(loaded, bgr=True)
    assert loaded.spec.preprocessing == Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), color="bgr")


def test_registry_v3_refuses_a_declared_normalisation():
    from edgeship.errors import UserError
    from edgeship.models.loading import declare_preprocessing

    loaded = load_model("mobilenet_v3_small_1.0_224")
    with pytest.raises(UserError, match="already normalises"):
        declare_preprocessing(loaded, mean=(127.5,) * 3, std=(127.5,) * 3)
