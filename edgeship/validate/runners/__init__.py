"""The runtime for each format (policy as data): which runner opens a file, and the name reports use.

Core ML runs in Core ML itself on macOS; elsewhere, where ``MLModel.predict`` cannot run, its ML Program is
executed by edgeship's NumPy reference executor (``coreml-reference``; see :mod:`edgeship.validate.mlprogram`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from edgeship.models.spec import Preprocessing
from edgeship.types import Format
from edgeship.validate.runner import Runner


def runner_for(fmt: Format, path: Path, preprocessing: Preprocessing, threads: int = 1) -> Runner:
    return _FACTORIES[fmt]()(path, preprocessing, threads)


def _litert() -> type[Runner]:
    from edgeship.validate.runners.litert import LiteRTRunner

    return LiteRTRunner


def _ort() -> type[Runner]:
    from edgeship.validate.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner


def _coreml() -> type[Runner]:
    if not _HAS_CORE_ML:
        return _coreml_reference()
    from edgeship.validate.runners.coreml import CoreMLRunner

    return CoreMLRunner


def _coreml_reference() -> type[Runner]:
    from edgeship.validate.runners.coreml_reference import CoreMLReferenceRunner

    return CoreMLReferenceRunner


_HAS_CORE_ML = sys.platform == "darwin"  # coremltools can predict only on macOS


_FACTORIES: dict[Format, Callable[[], type[Runner]]] = {Format.TFLITE: _litert, Format.ONNX: _ort, Format.COREML: _coreml}
RUNTIME_NAMES: dict[Format, str] = {Format.TFLITE: "litert", Format.ONNX: "onnxruntime",
                                    Format.COREML: "coreml" if _HAS_CORE_ML else "coreml-reference"}
