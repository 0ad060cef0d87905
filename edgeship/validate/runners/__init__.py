"""The runtime for each format (policy as data): which runner opens a file, and the name reports use."""

from __future__ import annotations

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
    from edgeship.validate.runners.coreml import CoreMLRunner

    return CoreMLRunner


_FACTORIES: dict[Format, Callable[[], type[Runner]]] = {Format.TFLITE: _litert, Format.ONNX: _ort, Format.COREML: _coreml}
RUNTIME_NAMES: dict[Format, str] = {Format.TFLITE: "litert", Format.ONNX: "onnxruntime", Format.COREML: "coreml"}
