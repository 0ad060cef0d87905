"""TFLite model metadata: the normalisation and labels MediaPipe Tasks needs to run a ``.tflite`` on its own.

MediaPipe Tasks ``ImageClassifier`` (and the TFLite Support Library's codegen) read a ``ModelMetadata`` flatbuffer
stored in the model under the name ``TFLITE_METADATA``: a float32 input needs ``NormalizationOptions`` or the
model is refused, and category names come from a label file packed into the model. This module writes that
metadata the way MediaPipe's own ``MetadataPopulator`` does, without mediapipe or tflite-support at run time
(see ``third_party/README.md`` for why neither can be used):

* the metadata tables are built with the vendored flatc-generated schema module and serialised with the file
  identifier ``M001``;
* the model is rewritten with ``ai_edge_litert``'s own TFLite schema, with one more ``Model.metadata`` entry;
* ``labels.txt`` is packed as an uncompressed zip archive appended to the flatbuffer, so the ``.tflite`` is a
  valid zip too: that is where MediaPipe's C++ ``ModelMetadataExtractor`` looks for associated files.

What MediaPipe 1.2.2 does with the metadata, read from its source and checked by the tests:

* float32 input: ``(pixel - mean) / std`` from ``NormalizationOptions``; a model without them is refused, and so
  is a per-channel mean/std ("Per-channel image normalization is not available").
* uint8 input: raw 0-255 pixels are fed; ``NormalizationOptions`` are parsed but not applied. The schema says a
  quantised model carries the same normalisation as its float model (clients normalise, then quantise with the
  input tensor's parameters), so they are written for every input type. MediaPipe's raw feed is only right when
  the input's quantisation is ``scale = 1/std, zero_point = mean``.
* int8 input is refused. The metadata is still written: the schema allows it and other clients can use it.
* colour space must be RGB. The schema has no BGR, so a BGR model is written with ``UNKNOWN`` (and says BGR in
  the input's description): MediaPipe then refuses it instead of silently feeding RGB to a BGR model.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any
import zipfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as _tfl
from ai_edge_litert.tools import flatbuffer_utils

from edgeship.errors import UserError
from edgeship.metadata.third_party import tflite_metadata_schema_py_generated as _md
from edgeship.types import ColorOrder, OutputKind

if TYPE_CHECKING:
    from edgeship.export.common import ModelInfo
    from edgeship.models.spec import ModelSpec

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry MediaPipe and tflite-support look up
METADATA_IDENTIFIER = b"M001"  # metadata_schema.fbs file_identifier
LABELS_FILE = "labels.txt"
# A fixed timestamp keeps the packed zip, and so the whole .tflite, byte-for-byte reproducible.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_TENSOR_RANGES: dict[int, tuple[float, float]] = {
    _tfl.TensorType.UINT8: (0.0, 255.0),
    _tfl.TensorType.INT8: (-128.0, 127.0),
}
_COLOR_SPACE_NAMES = {v: k for k, v in vars(_md.ColorSpaceType).items() if not k.startswith("_")}


def add_metadata(model: bytes, spec: "ModelSpec", info: ModelInfo) -> bytes:
    """Return the .tflite bytes with ModelMetadata + labels.txt packed in.

    Existing ``TFLITE_METADATA`` and packed files are replaced, so calling it twice is harmless. Raises
    :class:`UserError` when the model does not match ``spec`` (input shape, class count), since metadata that
    contradicts the model would make every client misread it.
    """
    tflite = _read_model(model)
    subgraph = tflite.subgraphs[0]
    if len(subgraph.inputs) != 1 or len(subgraph.outputs) != 1:
        raise UserError(
            f"TFLite metadata needs a model with one input and one output, this one has {len(subgraph.inputs)} "
            f"and {len(subgraph.outputs)}"
        )
    in_tensor = subgraph.tensors[subgraph.inputs[0]]
    out_tensor = subgraph.tensors[subgraph.outputs[0]]
    in_shape = [int(d) for d in in_tensor.shape]
    if in_shape[1:] != list(spec.input_shape):
        raise UserError(f"the TFLite model's input is {in_shape}, but the spec says (N, {spec.input_shape})")
    if int(out_tensor.shape[-1]) != spec.num_classes:
        raise UserError(f"the TFLite model has {int(out_tensor.shape[-1])} outputs, the spec {spec.num_classes} labels")
    bad = [label for label in spec.labels if "\n" in label or "\r" in label]
    if bad:
        raise UserError(f"labels cannot contain line breaks (labels.txt has one label per line): {bad[0]!r}")

    metadata = _model_metadata(spec, info, int(in_tensor.type))
    metadata.minParserVersion = min_parser_version(metadata)
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)
    metadata_bytes = np.frombuffer(bytes(builder.Output()), dtype=np.uint8)

    entries = [m for m in (tflite.metadata or []) if _text(m.name) != METADATA_NAME]
    tflite.buffers.append(_tfl.BufferT())
    tflite.buffers[-1].data = metadata_bytes
    entry = _tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tflite.buffers) - 1
    tflite.metadata = entries + [entry]
    flat = bytes(flatbuffer_utils.convert_object_to_bytearray(tflite))

    if not OutputKind(spec.output_kind).has_classes:
        return flat  # an embedding's or a regression's values are not classes: no labels.txt is packed
    labels_txt = ("\n".join(spec.labels) + "\n").encode("utf-8")
    return _append_zip(flat, {LABELS_FILE: labels_txt})


def read_metadata(model: bytes) -> dict[str, Any]:
    """Parse back the metadata :func:`add_metadata` writes, and the packed labels.

    Used by the validators and ``inspect`` to show what a client will see. Raises :class:`UserError` if the model
    has no metadata or a label file it names is not packed in.
    """
    buf = _metadata_buffer(model)
    if buf is None:
        raise UserError("the TFLite model has no metadata (no TFLITE_METADATA entry): export it with edgeship")
    if not _md.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise UserError("the TFLite model's TFLITE_METADATA is not a metadata flatbuffer (identifier is not M001)")
    meta = _md.ModelMetadataT.InitFromObj(_md.ModelMetadata.GetRootAs(buf, 0))
    if not meta.subgraphMetadata or not meta.subgraphMetadata[0].inputTensorMetadata \
            or not meta.subgraphMetadata[0].outputTensorMetadata:
        raise UserError("the TFLite model's metadata does not describe its input and output tensors")
    subgraph = meta.subgraphMetadata[0]
    inp = subgraph.inputTensorMetadata[0]
    out = subgraph.outputTensorMetadata[0]

    normalization = None
    for unit in inp.processUnits or []:
        if unit.optionsType == _md.ProcessUnitOptions.NormalizationOptions:
            normalization = {"mean": _floats(unit.options.mean), "std": _floats(unit.options.std)}
    props = inp.content.contentProperties if inp.content else None
    image = isinstance(props, _md.ImagePropertiesT)
    color_space = _COLOR_SPACE_NAMES.get(props.colorSpace, "UNKNOWN") if image and props is not None else None
    stats = {"min": _floats(inp.stats.min), "max": _floats(inp.stats.max)} if inp.stats else None
    labels_file = next(
        (_text(f.name) for f in out.associatedFiles or [] if f.type == _md.AssociatedFileType.TENSOR_AXIS_LABELS),
        None,
    )
    labels: list[str] = []
    if labels_file is not None:
        try:
            with zipfile.ZipFile(io.BytesIO(model)) as zf:
                text = zf.read(labels_file).decode("utf-8")
        except (zipfile.BadZipFile, KeyError):
            raise UserError(f"the TFLite metadata names {labels_file}, but it is not packed in the model") from None
        labels = text.split("\n")
        if labels and labels[-1] == "":  # the trailing newline, as MediaPipe's label reader treats it
            labels.pop()

    return {
        "name": _text(meta.name),
        "description": _text(meta.description),
        "version": _text(meta.version),
        "author": _text(meta.author),
        "license": _text(meta.license),
        "min_parser_version": _text(meta.minParserVersion),
        "input": {"name": _text(inp.name), "normalization": normalization, "color_space": color_space,
                  "stats": stats},
        "output": {"name": _text(out.name), "labels_file": labels_file},
        "labels": labels,
    }


def min_parser_version(metadata: "_md.ModelMetadataT") -> str:
    """The oldest metadata parser that understands every populated field.

    A Python port of ``GetMinimumMetadataParserVersion`` (mediapipe/tasks/cc/metadata/metadata_version.cc, the
    compiled function the mediapipe writer cannot import): start at 1.0.0 and raise it for each post-1.0.0
    schema member present. edgeship's classifier metadata uses none of them, so it gets "1.0.0".
    """
    version = (1, 0, 0)

    def need(v: tuple[int, int, int]) -> None:
        nonlocal version
        version = max(version, v)

    def files(fs: list[Any] | None) -> None:
        for f in fs or []:
            if f.type == _md.AssociatedFileType.VOCABULARY:
                need((1, 0, 1))
            if f.type == _md.AssociatedFileType.SCANN_INDEX_FILE:
                need((1, 4, 0))
            if f.version is not None:
                need((1, 4, 1))

    def units(us: list[Any] | None) -> None:
        for u in us or []:
            if u.optionsType in (_md.ProcessUnitOptions.BertTokenizerOptions,
                                 _md.ProcessUnitOptions.SentencePieceTokenizerOptions):
                need((1, 1, 0))
            if u.optionsType == _md.ProcessUnitOptions.RegexTokenizerOptions:
                need((1, 2, 1))

    for sg in metadata.subgraphMetadata or []:
        for tensor in (sg.inputTensorMetadata or []) + (sg.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content is not None and \
                    tensor.content.contentPropertiesType == _md.ContentProperties.AudioProperties:
                need((1, 3, 0))
        files(sg.associatedFiles)
        for present in (sg.inputProcessUnits, sg.outputProcessUnits):
            if present is not None:  # an empty vector counts: the C++ checks for a non-null field
                need((1, 1, 0))
                units(present)
        if sg.inputTensorGroups is not None or sg.outputTensorGroups is not None:
            need((1, 2, 0))
        if sg.customMetadata is not None:
            need((1, 5, 0))
    files(metadata.associatedFiles)
    return ".".join(str(p) for p in version)


def _model_metadata(spec: "ModelSpec", info: ModelInfo, input_type: int) -> "_md.ModelMetadataT":
    pre = spec.preprocessing
    rgb = pre.color is ColorOrder.RGB
    h, w, _ = spec.input_shape

    image = _md.ImagePropertiesT()
    image.colorSpace = _md.ColorSpaceType.RGB if rgb else _md.ColorSpaceType.UNKNOWN
    norm = _md.NormalizationOptionsT()
    norm.mean, norm.std = list(pre.mean), list(pre.std)
    unit = _md.ProcessUnitT()
    unit.optionsType, unit.options = _md.ProcessUnitOptions.NormalizationOptions, norm

    inp = _md.TensorMetadataT()
    inp.name = spec.input_name
    inp.description = (
        f"{'RGB' if rgb else 'BGR'} image, {h}x{w}, normalised per channel as (pixel - mean) / std"
        + ("" if rgb else "; channels in BGR order, and mean/std in that order")
    )
    inp.content = _md.ContentT()
    inp.content.contentPropertiesType, inp.content.contentProperties = _md.ContentProperties.ImageProperties, image
    inp.processUnits = [unit]
    inp.stats = _input_stats(spec, input_type)

    labels = _md.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "Class names, one per line, in class-index order."
    labels.type = _md.AssociatedFileType.TENSOR_AXIS_LABELS

    out = _md.TensorMetadataT()
    kind = str(spec.output_kind)
    out.name = {"probabilities": "probability", "multilabel": "scores", "embedding": "embedding",
                "regression": "output", "segmentation": "segmentation"}.get(kind, "logits")
    out.description = {
        "probabilities": f"Probabilities of {spec.num_classes} classes.",
        "multilabel": f"Independent scores in [0, 1] of {spec.num_classes} labels (sigmoid; multi-label).",
        "embedding": f"A {spec.num_classes}-value feature vector (embedding).",
        "regression": f"{'x'.join(map(str, spec.output_shape or (spec.num_classes,)))} output values (regression; "
                      "not class scores).",
        "segmentation": f"Per-pixel scores of {spec.num_classes} classes, "
                        f"{'x'.join(map(str, spec.output_shape[:2]))} (height x width); the class of a pixel is its "
                        "largest score.",
    }.get(kind, f"Logits of {spec.num_classes} classes.")
    out.content = _md.ContentT()
    out.content.contentPropertiesType = _md.ContentProperties.FeatureProperties
    out.content.contentProperties = _md.FeaturePropertiesT()
    # an embedding's or a regression's values are not classes: no label file
    out.associatedFiles = [labels] if OutputKind(kind).has_classes else []
    if kind in ("probabilities", "multilabel"):
        out.stats = _md.StatsT()
        out.stats.min, out.stats.max = [0.0], [1.0]

    subgraph = _md.SubGraphMetadataT()
    subgraph.name = spec.name
    subgraph.inputTensorMetadata = [inp]
    subgraph.outputTensorMetadata = [out]

    meta = _md.ModelMetadataT()
    meta.name, meta.description, meta.version = info.name, info.description, info.version
    meta.author, meta.license = info.author, info.license
    meta.subgraphMetadata = [subgraph]
    return meta


def _input_stats(spec: "ModelSpec", input_type: int) -> "_md.StatsT | None":
    """The input tensor's value range: the normalised pixel range for float input, the type's range otherwise."""
    stats = _md.StatsT()
    if input_type == _tfl.TensorType.FLOAT32:
        pre = spec.preprocessing
        stats.min = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        stats.max = [(255.0 - m) / s for m, s in zip(pre.mean, pre.std)]
    elif input_type in _TENSOR_RANGES:
        lo, hi = _TENSOR_RANGES[input_type]
        stats.min, stats.max = [lo], [hi]
    else:
        return None
    return stats


def _read_model(model: bytes) -> "_tfl.ModelT":
    if not _tfl.Model.ModelBufferHasIdentifier(model, 0):
        raise UserError("not a TFLite model (the flatbuffer identifier is not TFL3)")
    tflite = flatbuffer_utils.read_model_from_bytearray(model)
    if not tflite.subgraphs:
        raise UserError("the TFLite model has no subgraph")
    return tflite


def _metadata_buffer(model: bytes) -> bytes | None:
    """The TFLITE_METADATA buffer's bytes, read without unpacking the weights."""
    if not _tfl.Model.ModelBufferHasIdentifier(model, 0):
        raise UserError("not a TFLite model (the flatbuffer identifier is not TFL3)")
    root = _tfl.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _text(entry.Name()) != METADATA_NAME:
            continue
        buffer = root.Buffers(entry.Buffer())
        if buffer.DataLength():
            return buffer.DataAsNumpy().tobytes()
        if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer, addressed by offset
            return bytes(model[buffer.Offset(): buffer.Offset() + buffer.Size()])
    return None


def _append_zip(flat: bytes, files: dict[str, bytes]) -> bytes:
    """Append ``files`` as an uncompressed zip after the flatbuffer, as MetadataPopulator does.

    ``zipfile`` in append mode on a non-zip stream starts a new archive at its end and records absolute offsets,
    so zip readers (MediaPipe's included) find the files while TFLite reads the flatbuffer from the front.
    """
    out = io.BytesIO(flat)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values] if values is not None else []
