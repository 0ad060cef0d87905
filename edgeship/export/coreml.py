"""Core ML export: an ML Program ``.mlpackage`` with an image input, a classifier output (or, for a segmentation map,
an embedding or a regression, one named MultiArray output) and the model card.

The image input's ``ImageType(scale, bias, color_layout)`` is derived from the spec's :class:`Preprocessing`;
Core ML's scale is one number for all channels, so when the stds differ per channel the normalisation goes into
the graph instead (scale 1, bias 0, and ``(x - mean) / std`` as the first ops).

coremltools looks for the input by its TF placeholder name, and Keras 3 names it ``keras_tensor``: converting a
concrete function whose argument is named ``image`` gives the input the name clients use.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.export.common import ModelInfo, conversion_error
from edgeship.export.options import CoreMLTarget, ExportOptions
from edgeship.models.loading import LoadedModel
from edgeship.models.setups import takes_uint8
from edgeship.types import ColorOrder, Format, OutputKind, Precision

DEFAULT_TARGET = str(ExportOptions.model_fields["deployment_target"].default)
TARGETS = tuple(t.value for t in CoreMLTarget)


def export_coreml(loaded: LoadedModel, precision: Precision, info: ModelInfo, path: Path,
                  deployment_target: str = DEFAULT_TARGET) -> None:
    """Convert and save the ``.mlpackage`` directory at ``path`` (the caller makes ``path`` temporary)."""
    from edgeship._tf import import_quietly, silenced, tf

    if deployment_target not in TARGETS:
        raise UserError(f"unknown Core ML deployment target '{deployment_target}': choose from {', '.join(TARGETS)}")
    t = tf()
    ct = import_quietly("coremltools")
    model, spec = loaded.keras_model, loaded.spec
    classes = OutputKind(spec.output_kind).per_image  # a classifier; else (a map, values) a MultiArray output
    pre = spec.preprocessing
    h, w, c = spec.input_shape
    scale_bias = pre.scale_bias()
    if scale_bias is None:
        mean = t.constant(pre.mean, t.float32)
        std = t.constant(pre.std, t.float32)
        scale, bias = 1.0, [0.0, 0.0, 0.0]
        body = lambda image: model((image - mean) / std, training=False)  # noqa: E731
    else:
        scale, bias = scale_bias[0], list(scale_bias[1])
        body = lambda image: model(image, training=False)  # noqa: E731
    fn = t.function(body, input_signature=[t.TensorSpec((1, h, w, c), t.float32, name=spec.input_name)])
    image = ct.ImageType(
        name=spec.input_name, shape=(1, h, w, c), scale=scale, bias=bias, channel_first=False,
        color_layout=ct.colorlayout.BGR if pre.color is ColorOrder.BGR else ct.colorlayout.RGB,
    )
    from edgeship.export.reproducible import canonical_mlpackage, fresh_mil_names

    fresh_mil_names()  # op names must not depend on what this process converted or loaded before
    try:
        with silenced(), _uint8_cast_as_float(takes_uint8(model)):
            mlmodel = ct.convert(
                [fn.get_concrete_function()], source="tensorflow", convert_to="mlprogram", inputs=[image],
                # a classifier (classLabel + the class-score dictionary) only for one vector of class scores per
                # image; a segmentation map, an embedding or a regression is one named MultiArray output (issue 24)
                **({"classifier_config": ct.ClassifierConfig(list(spec.labels))} if classes else {}),
                compute_precision=ct.precision.FLOAT16 if precision is Precision.FP16 else ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, deployment_target),
            )
    except Exception as e:  # coremltools raises NotImplementedError, ValueError... per unsupported op
        raise conversion_error(model, Format.COREML, e) from e
    if not classes:
        mlmodel = _rename_output(ct, mlmodel, spec.output_tensor)
    describe(mlmodel, loaded, info)
    with silenced():
        mlmodel.save(str(path))
    canonical_mlpackage(path)  # byte-identical reruns: no random UUIDs, maps in key order


def _rename_output(ct: Any, mlmodel: Any, name: str) -> Any:
    """``mlmodel`` with its one output named ``name`` (the TF graph's is "Identity"), as coremltools documents it:
    ``ct.utils.rename_feature`` on the spec, the ML Program's weights kept."""
    spec = mlmodel.get_spec()
    old = spec.description.output[0].name
    if old != name:
        ct.utils.rename_feature(spec, old, name)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


@contextlib.contextmanager
def _uint8_cast_as_float(active: bool) -> Iterator[None]:
    """While converting a model with a uint8 input (:func:`edgeship.models.setups.raw_pixels_layer`: float32 pixels
    rounded and clipped to 0-255, then cast to uint8 for the SavedModel's signature), a TF ``Cast`` to uint8 -- which
    coremltools' TF frontend refuses -- passes its float32 value on unchanged: the value is already a whole number
    in 0-255, so the uint8 cast and the model's own cast back to float are both exact, and the graph computes what
    it computes in TFLite and ONNX. Restored afterwards; other models convert with coremltools' own ``Cast``."""
    if not active:
        yield
        return
    from coremltools.converters.mil.frontend.tensorflow import tf_op_registry
    from coremltools.converters.mil.mil import types

    registry = tf_op_registry._TF_OPS_REGISTRY
    original = registry["Cast"]

    def cast(context: Any, node: Any) -> None:
        if node.attr.get("DstT") is types.uint8:
            context.add(node.name, context[node.inputs[0]], is_new_var=False)
            return
        original(context, node)

    registry["Cast"] = cast
    try:
        yield
    finally:
        registry["Cast"] = original


def export_file(loaded: LoadedModel, precision: Precision, info: ModelInfo, path: Path,
                options: ExportOptions) -> dict[str, Any]:
    """The exporter of :data:`edgeship.formats.FORMATS`: writes the .mlpackage at ``path``; its manifest options."""
    target = str(options.deployment_target)
    export_coreml(loaded, precision, info, path, deployment_target=target)
    spec = loaded.spec
    output = "classLabel" if OutputKind(spec.output_kind).per_image else spec.output_tensor
    return {"input": spec.input_name, "input_type": "image", "output": output, "deployment_target": target}


def describe(mlmodel: Any, loaded: LoadedModel, info: ModelInfo) -> None:
    """The fields Xcode shows, plus edgeship's own in user_defined_metadata (read back by the validator)."""
    spec = loaded.spec
    mlmodel.short_description = info.description
    mlmodel.author = info.author
    mlmodel.license = info.license
    mlmodel.version = info.version
    pre = spec.preprocessing
    mlmodel.input_description[spec.input_name] = (
        f"{spec.input_shape[1]}x{spec.input_shape[0]} {pre.color.value.upper()} image; "
        f"normalised in the model as (pixel - {list(pre.mean)}) / {list(pre.std)}"
    )
    meta = mlmodel.user_defined_metadata
    meta["edgeship.version"] = __version__
    meta["edgeship.name"] = info.name
    meta["edgeship.preprocessing"] = json.dumps(pre.to_dict())
    meta["edgeship.output_kind"] = str(spec.output_kind)
    if OutputKind(spec.output_kind).has_classes:
        meta["edgeship.labels"] = json.dumps(list(spec.labels))


