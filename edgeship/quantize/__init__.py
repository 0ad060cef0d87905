"""The quantise stage: int8 post-training quantisation of TFLite, ONNX and Core ML from one calibration set.

Not implemented yet (its issue builds on the export stage). The stage will add its artifacts to the export
directory's ``manifest.json`` with precision ``int8`` (TFLite, ONNX) or ``w8`` / ``w8a8`` (Core ML), reusing
:mod:`edgeship.export` for conversion and :class:`edgeship.models.spec.Preprocessing` for calibration inputs.
"""

from edgeship.types import Precision

#: The precisions this stage will produce per format (policy as data, like export.FLOAT_PRECISIONS).
QUANTIZED_PRECISIONS = {"tflite": (Precision.INT8,), "onnx": (Precision.INT8,), "coreml": (Precision.W8, Precision.W8A8)}

__all__ = ["QUANTIZED_PRECISIONS"]
