"""edgeship: ship trained MobileNets to phones as .tflite, .onnx and .mlpackage, and prove they still agree.

The package is import-light on purpose: TensorFlow, ONNX and coremltools are imported lazily inside the stage
modules that need them, so ``edgeship --help`` is instant.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
