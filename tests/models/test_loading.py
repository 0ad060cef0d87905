from __future__ import annotations

import numpy as np
import pytest

from edgeship._tf import keras
from edgeship.errors import UserError
from edgeship.models.loading import DEMO_NAME, derive_spec, load_model
from edgeship.models.spec import Preprocessing, parse_triplet, read_labels
from edgeship.types import ColorOrder, Layout


def _tiny(softmax: bool = False, rescale: bool = False):
    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.Rescaling(1 / 255.0)(inp) if rescale else inp
    x = k.layers.Conv2D(4, 3, activation="relu6")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(5, activation="softmax" if softmax else None)(x))


@pytest.fixture
def custom_layer_model(tmp_path):
    k = keras()

    @k.saving.register_keras_serializable(package="usercode")
    class Doubler(k.layers.Layer):
        def call(self, x):
            return x * 2

    inp = k.Input((16, 16, 3))
    x = k.layers.GlobalAveragePooling2D()(Doubler()(inp))
    path = tmp_path / "custom.keras"
    k.Model(inp, k.layers.Dense(2)(x)).save(path)
    return path


def test_demo_is_the_default():
    loaded = load_model()
    assert loaded.spec.name == DEMO_NAME
    assert loaded.spec.labels[:3] == ("zero", "one", "two") and loaded.spec.num_classes == 10
    assert loaded.source_sha256 and len(loaded.source_sha256) == 64


def test_lambda_refused_then_trusted(tmp_path):
    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Lambda(lambda t: t + 1.0)(inp))
    path = tmp_path / "lam.keras"
    k.Model(inp, k.layers.Dense(2)(x)).save(path)
    with pytest.raises(UserError, match=r"Lambda 'lambda.*--trust-model"):
        load_model(path)
    loaded = load_model(path, trust_model=True)
    x = np.zeros((1, 16, 16, 3), np.float32)
    assert loaded.keras_model(x).shape == (1, 2)


def test_lambda_refused_in_h5_too(tmp_path):
    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Lambda(lambda t: t + 1.0)(inp))
    path = tmp_path / "lam.h5"
    k.Model(inp, k.layers.Dense(2)(x)).save(path)
    with pytest.raises(UserError, match="Lambda"):
        load_model(path)


def test_custom_layer_refused(custom_layer_model):
    with pytest.raises(UserError, match="Doubler"):
        load_model(custom_layer_model)


def test_h5_and_keras_and_savedmodel_load_the_same_model(tmp_path):
    model = _tiny()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    want = np.asarray(model(x))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    from edgeship._tf import silenced

    with silenced():
        model.export(str(tmp_path / "sm"))
    for p in ("m.keras", "m.h5", "sm"):
        loaded = load_model(tmp_path / p)
        assert loaded.spec.input_shape == (16, 16, 3) and loaded.spec.num_classes == 5
        np.testing.assert_allclose(np.asarray(loaded.keras_model(x)), want, rtol=1e-5, atol=1e-6)
        assert len(loaded.source_sha256) == 64


def test_labels_beside_the_model_are_used(tmp_path):
    _tiny().save(tmp_path / "m.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    assert load_model(tmp_path / "m.keras").spec.labels == ("a", "b", "c", "d", "e")
    (tmp_path / "other.txt").write_text("v\nw\nx\ny\nz\n\n")
    assert load_model(tmp_path / "m.keras", labels=tmp_path / "other.txt").spec.labels[-1] == "z"


def test_spec_derivation():
    spec = derive_spec(_tiny(softmax=True), "t")
    assert spec.outputs_probabilities and spec.preprocessing == Preprocessing()
    spec = derive_spec(_tiny(rescale=True), "t")
    assert not spec.outputs_probabilities and spec.preprocessing == Preprocessing.identity()


def test_unfixed_input_size_is_refused():
    k = keras()
    inp = k.Input((None, None, 3))
    model = k.Model(inp, k.layers.Dense(2)(k.layers.GlobalAveragePooling2D()(inp)))
    with pytest.raises(UserError, match="fixed size"):
        derive_spec(model, "dyn")


def test_preprocessing_apply_and_forms():
    pre = Preprocessing(mean=(10, 20, 30), std=(2, 2, 2), color=ColorOrder.BGR, layout=Layout.NCHW)
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0] = 50  # red
    x = pre.apply(img)
    assert x.shape == (1, 3, 2, 2)
    # BGR: channel 0 of the model's input is blue (0), channel 2 is red (50)
    assert np.allclose(x[0, 0], (0 - 10) / 2) and np.allclose(x[0, 2], (50 - 30) / 2)
    scale, bias = pre.scale_bias()
    assert scale == 0.5 and bias == (-5.0, -10.0, -15.0)
    assert Preprocessing(std=(58.4, 57.1, 57.4)).scale_bias() is None
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert Preprocessing().value_range == (-1.0, 1.0)
    with pytest.raises(UserError):
        Preprocessing(std=(1, 0, 1))


def test_parse_helpers(tmp_path):
    assert parse_triplet("127.5", "--mean") == (127.5,) * 3
    assert parse_triplet("1,2,3", "--mean") == (1.0, 2.0, 3.0)
    with pytest.raises(UserError):
        parse_triplet("1,2", "--mean")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        read_labels(tmp_path / "empty.txt")


def test_labels_from_the_training_folder_in_keras_class_index_order(tmp_path):
    """--labels DIR: the class folders' names in the order keras.utils.image_dataset_from_directory indexes them
    (checked against Keras itself: upper case before lower, "10" before "2", hidden folders skipped); a folder with
    no class folders, or with images beside them, is refused in one line."""
    from PIL import Image

    train = tmp_path / "train"
    for name in ("tabby", "Beagle", "2", "10", "épagneul", ".cache"):
        (train / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(train / name / "a.png")
    expected = tuple(keras().utils.image_dataset_from_directory(train, image_size=(8, 8), batch_size=2,
                                                                 verbose=False).class_names)
    assert read_labels(train) == expected == ("10", "2", "Beagle", "tabby", "épagneul")

    _tiny().save(tmp_path / "m.keras")  # 5 classes
    assert load_model(tmp_path / "m.keras", labels=train).spec.labels == expected
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no class folders"):
        read_labels(tmp_path / "empty")
    Image.new("RGB", (8, 8)).save(train / "stray.png")
    with pytest.raises(UserError, match="images beside its class folders"):
        read_labels(train)
