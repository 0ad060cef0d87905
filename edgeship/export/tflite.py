"""Float TFLite export (fp32, fp16) with the metadata MediaPipe Tasks' ImageClassifier needs.

The primary conversion is ``TFLiteConverter.from_concrete_functions`` on the model's inference with its variables
frozen (:func:`serving_function`), because it skips the SavedModel round trip ``from_keras_model`` makes for a
Keras 3 model (``keras.export.ExportArchive`` written to a temporary directory, then reloaded): measured on the
demo (MobileNetV2 0.35 at 96 px, 2 cores) ~3.5 s against ~12-14 s per conversion, and every TFLite conversion pays
it (the float fp32/fp16 exports, the int8 calibration, the dynamic-range w8).

Both give the same model: the same 172 tensors and 64 ops, identical weight buffers and bit-identical outputs
on the demo's held-out images (tests/export/test_tflite_fast_path.py, which also checks a nested-backbone model
with two outputs and the int8 quantisation parameters). What clients read is then made the SavedModel path's
(:func:`_as_saved_model_path`): its tensor names (``serving_default_<input>:0``, ``StatefulPartitionedCall_1:<k>``)
and its ``serving_default`` SignatureDef. Left different, and said here so nobody relies on them:

* the ``CONVERSION_METADATA`` buffer records the truth (model type TF_CONCRETE_FUNCTIONS, not KERAS_MODEL);
* a few fused intermediate tensors' location names have ``;`` where the SavedModel path writes ``;;``;
* a model with several outputs lists them in ``subgraph.outputs`` in the Keras model's order; the SavedModel path
  lists them in its protobuf map's order (``output_1`` before ``output_0`` on a two-output model). The
  SignatureDef, which names each output, is the same. (edgeship's own files have one output.)

A model the fast path does not cover exactly (not Functional/Sequential, not one input, outputs not a tensor, a
list of tensors or a dict of them, a name the SavedModel path would rewrite) goes through ``from_keras_model``,
which is also the fallback when the concrete conversion raises: issue trackers report either breaking on some
Keras 3 models (e.g. tensorflow/tensorflow#63987, #69237; keras-team/keras#19108).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
from typing import TYPE_CHECKING, Any, Callable

from edgeship.export.common import ModelInfo, conversion_error, io_record
from edgeship.fileio import environment_problem
from edgeship.models.loading import LoadedModel
from edgeship.types import Format, Precision

if TYPE_CHECKING:
    from edgeship.export.options import ExportOptions

SIGNATURE_KEY = "serving_default"  # the SignatureDef from_keras_model writes (the SavedModel's serving signature)
INPUT_PREFIX = "serving_default_"  # its input tensor: serving_default_<Keras input name>:0
OUTPUT_OP = "StatefulPartitionedCall_1"  # its outputs: StatefulPartitionedCall_1:<k>, k in sorted signature names
# A Keras input name the SavedModel path keeps as it is in its placeholder and signature; other names go through
# from_keras_model rather than guessing how TF would rewrite them.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TMPDIR = "the TFLite conversion's temporary files (TMPDIR)"


def convert(loaded: LoadedModel, precision: Precision, configure: Callable[[Any], None] | None = None) -> bytes:
    """The .tflite flatbuffer, without metadata. ``configure`` may set further converter options (the quantise
    stage uses it for int8). The frozen concrete function first, ``from_keras_model`` when it does not apply or
    raises (see the module docstring)."""
    from edgeship._tf import silenced, tf

    t = tf()
    model = loaded.keras_model

    def setup(converter: Any) -> Any:
        if precision is Precision.FP16:
            converter.optimizations = [t.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [t.float16]
        if configure is not None:
            configure(converter)
        return converter

    serving = serving_function(model)
    if serving is not None:
        try:
            with silenced():
                flat = setup(t.lite.TFLiteConverter.from_concrete_functions([serving.function])).convert()
            return _as_saved_model_path(flat, serving)
        except Exception as first:  # the converter raises ConverterError, ValueError, RuntimeError...
            problem = environment_problem(first, _TMPDIR)
            if problem is not None:  # the machine, not the model: no other path would fare better
                raise problem from first
    try:
        with silenced():
            return setup(t.lite.TFLiteConverter.from_keras_model(model)).convert()
    except Exception as second:
        problem = environment_problem(second, _TMPDIR)
        if problem is not None:
            raise problem from second
        raise conversion_error(model, Format.TFLITE, second) from second


@dataclass(frozen=True)
class ServingFunction:
    """The model's inference as ``from_keras_model`` exports it, as a frozen concrete function.

    ``input_name``: the Keras input's name (the SignatureDef's input); ``output_keys``: the SignatureDef's name of
    each of the function's outputs, in the function's (and so the converted subgraph's) order."""

    function: Any
    input_name: str
    output_keys: tuple[str, ...]


def serving_function(model: Any) -> ServingFunction | None:
    """The fast path's input, or None for a model it does not reproduce exactly (see the module docstring).

    The same call as ``from_keras_model``'s export (``model(x, training=False)`` on a spec of the Keras input's
    shape, batch dimension unknown, dtype and name), with the variables frozen to constants. Handed to
    ``from_concrete_functions`` unfrozen (even with the model as ``trackable_obj``), the Keras 3 variables were kept
    as resource variables: the .tflite held 262 ``VAR_HANDLE``/``READ_VARIABLE`` ops and no initialiser, so every
    read gave uninitialised memory and every image came out NaN (tests/export/test_export_check.py).

    A fixed batch of 1 (what the fallback used before) is not the same model: every tensor loses its
    ``shape_signature`` (-1 batch), and a Flatten becomes a constant reshape (fewer tensors and ops)."""
    try:
        from keras.src.models import Functional, Sequential
    except ImportError:
        return None
    if not isinstance(model, (Functional, Sequential)):
        return None  # from_keras_model takes a subclassed model's save spec: leave those to it
    inputs = model.inputs
    if len(inputs) != 1 or not _PLAIN_NAME.match(str(inputs[0].name)):
        return None
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from edgeship._tf import tf

    t = tf()
    spec = inputs[0]
    fn = t.function(lambda x: model(x, training=False),
                    input_signature=[t.TensorSpec(tuple(spec.shape), spec.dtype, name=str(spec.name))])
    concrete = fn.get_concrete_function()
    keys = _signature_outputs(concrete.structured_outputs)
    if keys is None:
        return None
    frozen = convert_variables_to_constants_v2(concrete)
    if len(frozen.outputs) != len(keys):
        return None
    return ServingFunction(frozen, str(spec.name), keys)


def _signature_outputs(outputs: Any) -> tuple[str, ...] | None:
    """The names the SavedModel's serving signature gives the function's flat outputs: ``output_<i>`` for a tensor
    or a list/tuple of tensors, the keys of a dict (flattened in sorted key order); None for other structures."""
    from edgeship._tf import tf

    t = tf()
    if t.is_tensor(outputs):
        return ("output_0",)
    if isinstance(outputs, (list, tuple)) and outputs and all(t.is_tensor(o) for o in outputs):
        return tuple(f"output_{i}" for i in range(len(outputs)))
    if isinstance(outputs, dict) and outputs and all(isinstance(k, str) and _PLAIN_NAME.match(k)
                                                     and t.is_tensor(v) for k, v in outputs.items()):
        return tuple(sorted(outputs))
    return None


def _as_saved_model_path(flat: bytes, serving: ServingFunction) -> bytes:
    """``flat`` with the I/O tensor names and the SignatureDef ``from_keras_model`` writes.

    The converter names the I/O tensors after the function's placeholder and its ``Identity`` outputs and writes no
    SignatureDef; this checks those names are what it converted (else ValueError: the caller falls back), renames
    them and adds the ``serving_default`` signature: input = the Keras input's name, outputs sorted by name, output
    ``k`` of that order being tensor ``StatefulPartitionedCall_1:k``."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship.metadata.tflite import _read_model, _text

    model = _read_model(flat)
    sg = model.subgraphs[0]
    function_outputs = [o.name.split(":")[0] for o in serving.function.outputs]
    got_in = [_text(sg.tensors[i].name) for i in sg.inputs]
    got_out = [_text(sg.tensors[i].name) for i in sg.outputs]
    if len(model.subgraphs) != 1 or model.signatureDefs or got_in != [serving.input_name] \
            or got_out != function_outputs:
        raise ValueError(f"unexpected converted I/O: inputs {got_in}, outputs {got_out}, "
                         f"{len(model.signatureDefs or [])} signatures")
    rank = {key: k for k, key in enumerate(sorted(serving.output_keys))}
    input_index = int(sg.inputs[0])
    sg.tensors[input_index].name = f"{INPUT_PREFIX}{serving.input_name}:0"
    by_key = {}
    for key, index in zip(serving.output_keys, sg.outputs):
        sg.tensors[index].name = f"{OUTPUT_OP}:{rank[key]}"
        by_key[key] = int(index)

    def entry(name: str, index: int) -> Any:
        m = tfl.TensorMapT()
        m.name, m.tensorIndex = name, index
        return m

    signature = tfl.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [entry(serving.input_name, input_index)]
    signature.outputs = [entry(key, by_key[key]) for key in sorted(by_key)]
    model.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(loaded: LoadedModel, precision: Precision, info: ModelInfo) -> bytes:
    from edgeship.metadata.tflite import add_metadata

    return add_metadata(convert(loaded, precision), loaded.spec, info)


def export_file(loaded: LoadedModel, precision: Precision, info: ModelInfo, path: Path,
                options: ExportOptions) -> dict[str, Any]:
    """The exporter of :data:`edgeship.formats.FORMATS`: writes the .tflite at ``path``; its manifest options."""
    path.write_bytes(export_tflite(loaded, precision, info))
    return {**io_record(loaded.spec), "layout": "nhwc", "metadata": "tflite"}
