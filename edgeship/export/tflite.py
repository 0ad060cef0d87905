"""Float TFLite export (fp32, fp16) with the metadata MediaPipe Tasks' ImageClassifier needs.

``TFLiteConverter.from_keras_model`` works for Keras 3 MobileNets; issue trackers report it breaking on some
Keras 3 models (it goes through ``model.export``), so a concrete-function conversion is the fallback
(e.g. tensorflow/tensorflow#63987, #69237; keras-team/keras#19108).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgeship.export.common import ModelInfo, conversion_error, io_record
from edgeship.fileio import environment_problem
from edgeship.models.loading import LoadedModel
from edgeship.types import Format, Precision

if TYPE_CHECKING:
    from edgeship.export.options import ExportOptions


def convert(loaded: LoadedModel, precision: Precision, configure: Callable[[Any], None] | None = None) -> bytes:
    """The .tflite flatbuffer, without metadata. ``configure`` may set further converter options (the quantise
    stage uses it for int8)."""
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

    h, w, c = loaded.spec.input_shape
    try:
        with silenced():
            return setup(t.lite.TFLiteConverter.from_keras_model(model)).convert()
    except Exception as first:  # the converter raises ConverterError, ValueError, RuntimeError...
        problem = environment_problem(first, "the TFLite conversion's temporary files (TMPDIR)")
        if problem is not None:  # the machine, not the model: no other path would fare better
            raise problem from first
        try:
            with silenced():
                return setup(t.lite.TFLiteConverter.from_concrete_functions([frozen_function(loaded)])).convert()
        except Exception as second:
            problem = environment_problem(second, "the TFLite conversion's temporary files (TMPDIR)")
            if problem is not None:
                raise problem from second
            raise conversion_error(model, Format.TFLITE, first) from first


def frozen_function(loaded: LoadedModel) -> Any:
    """The model's inference as a concrete function whose variables are constants: the fallback's input.

    Handed to ``from_concrete_functions`` unfrozen (even with the model as ``trackable_obj``), the Keras 3
    variables were kept as resource variables: the .tflite held 262 ``VAR_HANDLE``/``READ_VARIABLE`` ops and no
    initialiser, so every read gave uninitialised memory and every image came out NaN. Freezing them first gives
    the same graph the SavedModel path converts (tests/export/test_tflite_fallback.py compares the outputs)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from edgeship._tf import tf

    t = tf()
    model = loaded.keras_model
    h, w, c = loaded.spec.input_shape
    fn = t.function(lambda image: model(image, training=False),
                    input_signature=[t.TensorSpec((1, h, w, c), t.float32, name="image")])
    return convert_variables_to_constants_v2(fn.get_concrete_function())


def export_tflite(loaded: LoadedModel, precision: Precision, info: ModelInfo) -> bytes:
    from edgeship.metadata.tflite import add_metadata

    return add_metadata(convert(loaded, precision), loaded.spec, info)


def export_file(loaded: LoadedModel, precision: Precision, info: ModelInfo, path: Path,
                options: ExportOptions) -> dict[str, Any]:
    """The exporter of :data:`edgeship.formats.FORMATS`: writes the .tflite at ``path``; its manifest options."""
    path.write_bytes(export_tflite(loaded, precision, info))
    return {**io_record(loaded.spec), "layout": "nhwc", "metadata": "tflite"}
