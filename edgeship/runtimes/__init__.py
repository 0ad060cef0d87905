"""The runtimes layer: opening and executing an artifact, below the stages that use it. The quantise stage runs
artifacts to calibrate and measure per-layer error; the validate stage to compare and time them; neither imports
the other for it.

- :mod:`edgeship.runtimes.runner`: the one Runner interface (``open``, ``inputs``, ``infer``, ``predict``);
- one module per runtime: ``keras``, ``litert`` (XNNPACK, and reference kernels), ``onnxrt`` (optimised, and
  unfused), ``coreml`` (macOS), ``coreml_reference`` (the NumPy ML Program executor, :mod:`.mlprogram`).

This module is the table (policy as data): which runner opens a file of each format, and the name reports use.

Core ML runs in Core ML itself on macOS; elsewhere, where ``MLModel.predict`` cannot run, its ML Program is
executed by edgeship's NumPy reference executor (``coreml-reference``; see :mod:`edgeship.runtimes.mlprogram`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from edgeship.models.spec import Preprocessing
from edgeship.types import Format, Precision
from edgeship.runtimes.runner import Runner


def runner_for(fmt: Format, path: Path, preprocessing: Preprocessing, threads: int = 1) -> Runner:
    return _FACTORIES[fmt]()(path, preprocessing, threads)


def kernel_path_runner(fmt: Format, precision: Precision, path: Path, preprocessing: Preprocessing,
                       threads: int = 1) -> Runner | None:
    """The runner of ``path``'s second kernel path (:data:`KERNEL_PATHS`), or None when its format and precision
    have none."""
    if precision not in KERNEL_PATH_PRECISIONS or fmt not in KERNEL_PATHS:
        return None
    return KERNEL_PATHS[fmt][0]()(path, preprocessing, threads)


def _litert_reference() -> type[Runner]:
    from edgeship.runtimes.litert import LiteRTReferenceRunner

    return LiteRTReferenceRunner


def _ort_unfused() -> type[Runner]:
    from edgeship.runtimes.onnxrt import OnnxRuntimeUnfusedRunner

    return OnnxRuntimeUnfusedRunner


def _litert() -> type[Runner]:
    from edgeship.runtimes.litert import LiteRTRunner

    return LiteRTRunner


def _ort() -> type[Runner]:
    from edgeship.runtimes.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner


def _coreml() -> type[Runner]:
    if not _HAS_CORE_ML:
        return _coreml_reference()
    from edgeship.runtimes.coreml import CoreMLRunner

    return CoreMLRunner


def _coreml_reference() -> type[Runner]:
    from edgeship.runtimes.coreml_reference import CoreMLReferenceRunner

    return CoreMLReferenceRunner


_HAS_CORE_ML = sys.platform == "darwin"  # coremltools can predict only on macOS


_FACTORIES: dict[Format, Callable[[], type[Runner]]] = {Format.TFLITE: _litert, Format.ONNX: _ort, Format.COREML: _coreml}
RUNTIME_NAMES: dict[Format, str] = {Format.TFLITE: "litert", Format.ONNX: "onnxruntime",
                                    Format.COREML: "coreml" if _HAS_CORE_ML else "coreml-reference"}

#: Portability: an int8 file also runs through a second kernel path of its runtime, one whose arithmetic does not
#: depend on the CPU's 8-bit instructions, and the two must agree (policy: kernel_path_* gates). A kernel that
#: saturates on this CPU (edgeship.quantize.portability) shows up as disagreement. (runner, what it compares)
KERNEL_PATHS: dict[Format, tuple[Callable[[], type[Runner]], str]] = {
    Format.TFLITE: (_litert_reference, "LiteRT reference kernels (BUILTIN_REF, int32 loops) against XNNPACK"),
    Format.ONNX: (_ort_unfused, "ONNX Runtime unfused graph (ORT_DISABLE_ALL: DequantizeLinear, float op, "
                                "QuantizeLinear) against its fused int8 kernels"),
}
KERNEL_PATH_PRECISIONS = frozenset({Precision.INT8})
