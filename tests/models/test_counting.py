"""Parameter and MAC counting, checked against arithmetic done by hand and against the MobileNet papers."""

from __future__ import annotations

import pytest

from edgeship._tf import keras as _keras, tf as _tf
from edgeship.errors import UserError
from edgeship.models.counting import ModelCounts, count_concrete_function, count_keras_model

keras = _keras()
tf = _tf()
L = keras.layers


def _by_name(counts: ModelCounts) -> dict[str, tuple[str, int, int]]:
    return {r.name: (r.kind, r.params, r.macs) for r in counts.layers}


def _tiny(inputs=None) -> keras.Model:
    """32x32x3 -> conv 3x3/2 (8) -> BN -> depthwise 3x3 -> 1x1 conv (16) -> GAP -> *0.5 -> dense (10)."""
    i = inputs if inputs is not None else keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="conv")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(16, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = x * 0.5  # a bare Keras op in the graph: no weights, no MACs
    o = L.Dense(10, name="fc")(x)
    return keras.Model(i, o, name="tiny")


# By hand: conv 3x3x3 -> 8 at 16x16 (stride 2, 'same'), depthwise 3x3 on 8 channels at 16x16, pointwise 8 -> 16 at
# 16x16, dense 16 -> 10. Bias adds, BN, ReLU, pooling and the scaling are free.
TINY_ROWS = {
    "conv": ("conv", 3 * 3 * 3 * 8 + 8, 3 * 3 * 3 * 8 * 16 * 16),  # 224 params, 55,296 MACs
    "bn": ("other", 4 * 8, 0),  # gamma, beta, moving mean, moving variance
    "dw": ("depthwise", 3 * 3 * 8 + 8, 3 * 3 * 8 * 16 * 16),  # 80, 18,432
    "pw": ("pointwise", 8 * 16 + 16, 8 * 16 * 16 * 16),  # 144, 32,768
    "fc": ("fc", 16 * 10 + 10, 16 * 10),  # 170, 160
}
TINY_MACS = 55_296 + 18_432 + 32_768 + 160  # 106,656
TINY_PARAMS = 224 + 32 + 80 + 144 + 170  # 650
TINY_TRAINABLE = TINY_PARAMS - 2 * 8  # BN's moving statistics are not trainable


def test_tiny_model_by_hand() -> None:
    counts = count_keras_model(_tiny())
    assert _by_name(counts) == TINY_ROWS
    assert [r.name for r in counts.layers] == ["conv", "bn", "dw", "pw", "fc"]
    assert counts.macs == TINY_MACS == 106_656
    assert counts.params == TINY_PARAMS == 650
    assert counts.trainable_params == TINY_TRAINABLE == 634
    assert {r.name: r.output_shape for r in counts.layers}["dw"] == (16, 16, 8)
    d = counts.to_dict()
    assert d == {"params": 650, "trainable_params": 634, "macs": 106_656}
    assert counts.to_dict(layers=True)["layers"][0] == {
        "name": "conv", "kind": "conv", "output_shape": [16, 16, 8], "params": 224, "macs": 55_296
    }


def test_grouped_separable_and_dense_on_3d() -> None:
    i = keras.Input((10, 10, 8))
    g = L.Conv2D(12, 3, groups=4, name="grouped")(i)  # valid: 8x8x12, kernel (3, 3, 8/4, 12)
    s = L.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(g)  # 4x4x6
    d = L.Dense(5, name="fc3d")(s)  # Dense on (4, 4, 6): a 6 -> 5 matmul at each of 4*4 positions
    counts = count_keras_model(keras.Model(i, d))
    assert _by_name(counts) == {
        "grouped": ("conv", 3 * 3 * 2 * 12 + 12, 3 * 3 * 2 * 12 * 8 * 8),  # 228, 13,824
        # depthwise 3x3 on 12 channels x2, at the strided 4x4 output; pointwise 24 -> 6 at 4x4 (+6 bias)
        "sep/depthwise": ("depthwise", 3 * 3 * 12 * 2, 3 * 3 * 12 * 2 * 4 * 4),  # 216, 3,456
        "sep/pointwise": ("pointwise", 24 * 6 + 6, 24 * 6 * 4 * 4),  # 150, 2,304
        "fc3d": ("fc", 6 * 5 + 5, 6 * 5 * 4 * 4),  # 35, 480
    }
    assert counts.macs == 13_824 + 3_456 + 2_304 + 480
    assert {r.name: r.output_shape for r in counts.layers}["fc3d"] == (4, 4, 5)


def test_nested_and_sequential_count_like_flat() -> None:
    i = keras.Input((32, 32, 3))
    outer = keras.Model(i, L.Dense(5, name="head")(_tiny()(i)), name="outer")
    counts = count_keras_model(outer)
    rows = _by_name(counts)
    assert rows.pop("head") == ("fc", 10 * 5 + 5, 10 * 5)
    assert rows == {f"tiny/{k}": v for k, v in TINY_ROWS.items()}
    assert counts.macs == TINY_MACS + 50
    assert counts.params == TINY_PARAMS + 55 == outer.count_params()

    seq = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(8, 3, strides=2, padding="same"), L.Dense(4)])
    assert count_keras_model(seq).macs == 3 * 3 * 3 * 8 * 16 * 16 + 8 * 4 * 16 * 16


def test_nested_model_without_input_size_is_counted_at_the_size_fed() -> None:
    base = _tiny(keras.Input((None, None, 3)))
    with pytest.raises(UserError, match="input size"):
        count_keras_model(base)
    assert count_keras_model(base, input_shape=(32, 32, 3)).macs == TINY_MACS
    i = keras.Input((32, 32, 3))
    assert count_keras_model(keras.Model(i, base(i))).macs == TINY_MACS


def test_shared_layer_counts_macs_per_call_params_once() -> None:
    i = keras.Input((8,))
    dense = L.Dense(8, name="shared")
    m = keras.Model(i, dense(dense(i)))
    counts = count_keras_model(m)
    assert _by_name(counts) == {"shared": ("fc", 72, 64), "shared#2": ("fc", 0, 64)}
    assert counts.params == 72


def test_layers_it_cannot_see_into_are_refused() -> None:
    i = keras.Input((4, 8))
    m = keras.Model(i, L.MultiHeadAttention(num_heads=2, key_dim=4)(i, i))
    with pytest.raises(UserError, match="count_concrete_function"):
        count_keras_model(m)


def test_mobilenet_v1_against_paper() -> None:
    counts = count_keras_model(keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=1.0, weights=None))
    first = counts.layers[0]
    assert (first.name, first.kind, first.output_shape) == ("conv1", "conv", (112, 112, 32))
    assert first.macs == 3 * 3 * 3 * 32 * 112 * 112 == 10_838_016
    assert counts.macs == pytest.approx(569e6, rel=0.01)  # paper: 569M; here 568.7M
    assert counts.params == pytest.approx(4.2e6, rel=0.02)  # paper: 4.2M
    assert sum(r.params for r in counts.layers) == counts.params


def test_mobilenet_v2_against_paper_and_traced_graph() -> None:
    counts = count_keras_model(keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None))
    assert counts.macs == pytest.approx(300e6, rel=0.02)  # paper: 300M; here 300.8M
    assert counts.params == pytest.approx(3.5e6, rel=0.02)  # paper: 3.4M conv/FC weights; +BN statistics here

    small = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    fn = tf.function(lambda x: small(x, training=False)).get_concrete_function(tf.TensorSpec([2, 96, 96, 3]))
    traced, layered = count_concrete_function(fn), count_keras_model(small)
    assert traced.macs == layered.macs  # per image, although traced with a batch of 2
    assert (traced.params, traced.trainable_params) == (layered.params, layered.trainable_params)
    assert sorted(r.macs for r in traced.layers) == sorted(r.macs for r in layered.layers if r.macs)


def test_traced_graph_needs_static_shapes() -> None:
    fn = tf.function(lambda x: tf.matmul(x, tf.ones((8, 4)))).get_concrete_function(tf.TensorSpec([None, 8]))
    with pytest.raises(UserError, match="input size"):
        count_concrete_function(fn)
