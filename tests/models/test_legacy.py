"""Keras 2 files: a ``.h5`` whose config is written the way tf.keras 2.15 wrote it, and a SavedModel."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from edgeship._tf import keras
from edgeship.errors import UserError
from edgeship.models.legacy import translate_config
from edgeship.models.loading import load_model
from tests.models.keras2_files import keras2_config, write_keras2_h5, write_saved_model


def _depthwise_net(dense_activation=None):
    """A tiny MobileNet-shaped model: conv, BN, ReLU6, depthwise conv, GAP, Dense."""
    k = keras()
    k.utils.set_random_seed(1)
    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(4, 3, padding="same")(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.DepthwiseConv2D(3, padding="same")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(3, activation=dense_activation)(x))


@pytest.mark.parametrize("top_class", ["Functional", "Model"])
def test_keras2_h5_loads_with_each_difference_noted(tmp_path, top_class):
    model = _depthwise_net()
    path = write_keras2_h5(model, tmp_path / "k2.h5", top_class)
    with h5py.File(path) as f:  # the file really is in Keras 2's form, which Keras 3 alone refuses
        raw = json.loads(f.attrs["model_config"])
    assert '"groups": 1' in json.dumps([l for l in raw["config"]["layers"] if l["class_name"] == "DepthwiseConv2D"])
    with pytest.raises(Exception, match="groups"):
        keras().saving.load_model(path, compile=False)

    loaded = load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.keras_model.predict(x, verbose=0), model.predict(x, verbose=0))
    joined = "\n".join(loaded.notes)
    assert "DepthwiseConv2D groups=1" in joined and "batch_input_shape" in joined and "axis" in joined
    assert len(loaded.notes) == 3


def test_translation_leaves_a_keras3_config_alone_and_keeps_real_groups():
    model = _depthwise_net()
    config = {"class_name": "Functional", "config": model.get_config()}
    assert translate_config(config)[1] == []
    legacy = keras2_config(config)
    for layer in legacy["config"]["layers"]:
        if layer["class_name"] == "DepthwiseConv2D":
            layer["config"]["groups"] = 2  # not the harmless value: not translated
    translated, notes = translate_config(legacy)
    assert not any("groups" in n.what for n in notes)
    assert any("groups" in l["config"] for l in translated["config"]["layers"] if l["class_name"] == "DepthwiseConv2D")


def test_unreadable_keras2_file_says_the_cause_first(tmp_path):
    path = write_keras2_h5(_depthwise_net(), tmp_path / "odd.h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        dense = next(l for l in config["config"]["layers"] if l["class_name"] == "Dense")
        dense["config"]["sparse_mode"] = "x"  # a keyword no Keras knows
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(UserError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500
    assert "layer 'dense" in msg and "sparse_mode" in msg and "re-save" in msg
    assert "config={" not in msg


def test_keras2_h5_with_lambda_is_refused_without_trust(tmp_path):
    k = keras()
    inp = k.Input((8, 8, 3))
    model = k.Model(inp, k.layers.Dense(2)(k.layers.GlobalAveragePooling2D()(k.layers.Lambda(lambda t: t * 2)(inp))))
    path = write_keras2_h5(model, tmp_path / "lam.h5")
    with pytest.raises(UserError, match="Lambda"):
        load_model(path)


def test_savedmodel_as_keras2_wrote_it_loads(tmp_path):
    model = _depthwise_net(dense_activation="softmax")
    path = write_saved_model(model, tmp_path / "sm")
    loaded = load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.keras_model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.spec.input_shape == (16, 16, 3) and loaded.spec.num_classes == 3
