"""ONNX export through tf2onnx: opset 17, dynamic batch, NHWC input (NCHW on request), labels and
preprocessing in ``metadata_props``, checked with ``onnx.checker`` (full check).

``tf2onnx.convert.from_function`` on a ``tf.function`` is the documented robust path for Keras 3 models. Never
``large_model=True``: it breaks with numpy 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.export.common import ModelInfo, conversion_error, io_record
from edgeship.export.reproducible import canonical_onnx
from edgeship.export.options import MAX_OPSET, MIN_OPSET, ExportOptions
from edgeship.models.loading import LoadedModel
from edgeship.types import Format, Layout, Precision

DEFAULT_OPSET: int = ExportOptions.model_fields["opset"].default


def export_onnx(loaded: LoadedModel, info: ModelInfo, layout: Layout = Layout.NHWC, opset: int = DEFAULT_OPSET) -> bytes:
    from edgeship._tf import import_quietly, silenced, tf

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"ONNX opset {opset} is not supported: choose {MIN_OPSET} to {MAX_OPSET} "
                        f"(default {DEFAULT_OPSET})")
    t = tf()
    tf2onnx = import_quietly("tf2onnx")
    onnx = import_quietly("onnx")
    model, spec = loaded.keras_model, loaded.spec
    h, w, c = spec.input_shape
    fn = t.function(lambda image: model(image, training=False))
    signature = [t.TensorSpec((None, h, w, c), t.float32, name=spec.input_name)]
    try:
        with silenced():
            proto, _ = tf2onnx.convert.from_function(
                fn, input_signature=signature, opset=opset,
                inputs_as_nchw=[spec.input_name] if layout is Layout.NCHW else None,
            )
    except Exception as e:  # tf2onnx raises many types for an unsupported op
        raise conversion_error(model, Format.ONNX, e) from e
    rename_output(proto, spec.output_tensor)
    set_metadata(proto, loaded, info, layout)
    canonical_onnx(proto)  # byte-identical reruns (edgeship.export.reproducible)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise conversion_error(model, Format.ONNX, e) from e
    return proto.SerializeToString()


def export_file(loaded: LoadedModel, precision: Precision, info: ModelInfo, path: Path,
                options: ExportOptions) -> dict[str, Any]:
    """The exporter of :data:`edgeship.formats.FORMATS`: writes the .onnx at ``path``; its manifest options."""
    path.write_bytes(export_onnx(loaded, info, layout=options.onnx_layout, opset=options.opset))
    return {**io_record(loaded.spec), "layout": str(options.onnx_layout), "opset": options.opset}


def rename_output(proto: Any, new: str) -> None:
    """tf2onnx names the output after the TF graph ('Identity:0'); clients want a stable name."""
    old = proto.graph.output[0].name
    if old == new:
        return
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    proto.graph.output[0].name = new


def set_metadata(proto: Any, loaded: LoadedModel, info: ModelInfo, layout: Layout) -> None:
    spec = loaded.spec
    props = {
        "edgeship_version": __version__,
        "name": info.name,
        "description": info.description,
        "version": info.version,
        "author": info.author,
        "license": info.license,
        "labels": json.dumps(list(spec.labels)),
        "preprocessing": json.dumps(spec.preprocessing.to_dict()),
        "input_layout": str(layout),
        "output": str(spec.output_kind),  # probabilities, logits, multilabel, embedding or regression
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = info.description
    proto.domain = "ai.edgeship"
