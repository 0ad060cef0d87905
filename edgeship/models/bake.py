"""``--bake-preprocessing``: the declared normalisation and channel order become the model's first op, so every
file takes raw 0-255 RGB pixels and its metadata declares the identity (mean 0, std 1; a uint8 input for int8).

Why: MediaPipe Tasks' ImageClassifier takes one mean and one std for all channels and RGB only — a per-channel
mean/std in a ``.tflite``'s NormalizationOptions is refused ("Per-channel image normalization is not available",
``image_preprocessing_graph.cc``), and BGR is not an option of its ImageProperties; Core ML's ``ImageType`` has one
``scale`` for all channels. Issue 13 measured it: the normalisation inside the model as a first layer made
MediaPipe give exactly Keras' answers.

The first op is one 1x1 ``Conv2D`` (3 -> 3 channels) holding ``y[c] = (pixel[p(c)] - mean[c]) / std[c]``
(``p`` the identity for RGB, the channel reversal for BGR): weight ``1/std[c]`` at ``(p(c), c)``, bias
``-mean[c]/std[c]``. A convolution, rather than Subtract/Divide/Reverse ops, because every converter and the
int8 stage (per-channel int8 weights, ONNX rewritten from the int8 TFLite) handle one; it costs 9 multiply-adds a
pixel, and its per-channel int8 weights are exact (one non-zero per output channel).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgeship.models.innorm import is_identity
from edgeship.models.loading import LoadedModel
from edgeship.models.spec import Preprocessing
from edgeship.types import ColorOrder

LAYER_NAME = "edgeship_preprocessing"


def mediapipe_problem(pre: Preprocessing) -> str | None:
    """Why MediaPipe's ImageClassifier cannot feed a float ``.tflite`` with this preprocessing, or None."""
    why = []
    if max(pre.mean) - min(pre.mean) > 1e-9 or max(pre.std) - min(pre.std) > 1e-9:
        why.append("per-channel mean/std")
    if pre.color is ColorOrder.BGR:
        why.append("BGR channel order")
    return " and ".join(why) or None


def bake_preprocessing(loaded: LoadedModel) -> LoadedModel:
    """A copy of ``loaded`` whose model begins with its declared preprocessing and whose preprocessing is the
    identity (``spec.baked_preprocessing`` records what was baked). Nothing to bake (already the identity):
    ``loaded`` itself."""
    pre = loaded.spec.preprocessing
    if is_identity(pre):
        return loaded
    spec = loaded.spec.replace(preprocessing=replace(Preprocessing.identity(), layout=pre.layout),
                               baked_preprocessing=pre)
    from edgeship.models.innorm import formula

    return LoadedModel(baked_model(loaded.keras_model, pre), spec, loaded.source_path, loaded.source_sha256,
                       notes=list(loaded.notes), in_graph=loaded.in_graph, labels_source=loaded.labels_source,
                       preprocessing_source=f"baked into the files' first op ({formula(pre)}, "
                                            f"{loaded.preprocessing_source})")


def bake_like(loaded: LoadedModel, baked: Preprocessing) -> LoadedModel:
    """The validator's reference for files made with ``--bake-preprocessing``: the source model with ``baked``
    (from the manifest) as its first op, fed raw pixels like the files."""
    return bake_preprocessing(LoadedModel(loaded.keras_model, loaded.spec.replace(preprocessing=baked),
                                          loaded.source_path, loaded.source_sha256, notes=list(loaded.notes),
                                          in_graph=loaded.in_graph, labels_source=loaded.labels_source,
                                          preprocessing_source="recorded in the manifest at export"))


def baked_model(km: Any, pre: Preprocessing) -> Any:
    """``km`` behind a 1x1 Conv2D that maps raw RGB pixels (N, H, W, 3) float32 in 0-255 to ``pre.apply``'s
    output; the returned keras.Model has ``km``'s name and input shape."""
    from edgeship._tf import keras

    k = keras()
    weights, bias = conv_weights(pre)
    inp = k.Input(shape=tuple(km.input_shape[1:]), name="image")
    conv = k.layers.Conv2D(3, 1, use_bias=True, name=LAYER_NAME)
    x = conv(inp)
    conv.set_weights([weights, bias])
    return k.Model(inp, km(x), name=km.name)


def conv_weights(pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (1, 1, 3, 3) float32 indexed [.., in, out], bias (3,) float32) of ``pre`` as a 1x1 convolution."""
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for c in range(3):
        src = 2 - c if pre.color is ColorOrder.BGR else c
        kernel[0, 0, src, c] = 1.0 / pre.std[c]
    bias = np.asarray([-m / s for m, s in zip(pre.mean, pre.std)], np.float32)
    return kernel, bias
