"""The runtimes layer: opening and executing an artifact, below the stages that use it. The quantise stage runs
artifacts to calibrate and measure per-layer error; the validate stage to compare and time them; neither imports
the other for it.

- :mod:`edgeship.runtimes.runner`: the one Runner interface (``open``, ``inputs``, ``infer``, ``predict``);
- one module per runtime: ``keras``, ``litert`` (XNNPACK, and reference kernels), ``onnxrt`` (optimised, and
  unfused), ``coreml`` (macOS), ``coreml_reference`` (the NumPy ML Program executor, :mod:`.mlprogram`).

This module is the table the stages use, read from the format declarations (:data:`edgeship.formats.FORMATS`):
which runner opens a file of each format, the name reports use, and each format's second kernel path.

Core ML runs in Core ML itself on macOS; elsewhere, where ``MLModel.predict`` cannot run, its ML Program is
executed by edgeship's NumPy reference executor (``coreml-reference``; see :mod:`edgeship.runtimes.mlprogram`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgeship.formats import FORMATS
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


#: The Runner class of each format on this platform (a lazy import each).
_FACTORIES: dict[Format, Callable[[], type[Runner]]] = {f: spec.runtime.runner.load for f, spec in FORMATS.items()}
RUNTIME_NAMES: dict[Format, str] = {f: spec.runtime.name for f, spec in FORMATS.items()}

#: Portability: an int8 file also runs through a second kernel path of its runtime, one whose arithmetic does not
#: depend on the CPU's 8-bit instructions, and the two must agree (policy: kernel_path_* gates). A kernel that
#: saturates on this CPU (edgeship.quantize.portability) shows up as disagreement. (runner, what it compares)
KERNEL_PATHS: dict[Format, tuple[Callable[[], type[Runner]], str]] = {
    f: (spec.kernel_path.runner.load, spec.kernel_path.what) for f, spec in FORMATS.items() if spec.kernel_path}
KERNEL_PATH_PRECISIONS = frozenset({Precision.INT8})
