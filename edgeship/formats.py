"""One declaration per artifact format: everything a stage asks about a format, in one place.

A :class:`FormatSpec` gives the file's suffix and whether it is a directory, the float precisions its exporter
makes and the quantised ones its quantiser makes (the defaults of each), the runtimes that open it (the first one
this platform has is used), the second kernel path its int8 files also run through, and where its exporter,
quantiser and precision probe live. Implementations are named ``"package.module:attribute"`` and imported only
when used (:class:`Lazy`, the one dispatch style), so this module stays light (``edgeship --help`` reads it) and a
missing optional backend fails only the format that needs it.

Each stage keeps one table that reads :data:`FORMATS`: export (:mod:`edgeship.export.common`: precisions, file
names; :func:`edgeship.export.export`: the exporter), quantize (``QUANTIZERS``, ``QUANTIZED_PRECISIONS``,
``DEFAULT_PRECISIONS``), runtimes (``runner_for``, ``RUNTIME_NAMES``, ``KERNEL_PATHS``), validate (a file's
format by its suffix, its precision when no manifest records it).

To add a format: a member of :class:`edgeship.types.Format`, its declaration here, and the modules it names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from edgeship.types import Format, Precision

__all__ = ["FORMATS", "FormatSpec", "Lazy", "Runtime", "format_of"]


@dataclass(frozen=True)
class Lazy:
    """An implementation named by ``"package.module:attribute"``, imported on first use."""

    target: str

    def load(self) -> Any:
        import importlib

        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)


@dataclass(frozen=True)
class Runtime:
    """A runtime that opens a format's files: its name in reports and its :class:`~edgeship.runtimes.runner.Runner`
    class (``(path, preprocessing, threads) -> Runner``)."""

    name: str
    runner: Lazy
    platforms: tuple[str, ...] = ()  # the ``sys.platform`` values it runs on; () every one
    what: str = ""  # for a second kernel path: what it is compared with

    @property
    def available(self) -> bool:
        return not self.platforms or sys.platform in self.platforms


@dataclass(frozen=True)
class FormatSpec:
    format: Format
    suffix: str
    directory: bool  # the artifact is a directory (an .mlpackage), not one file
    #: ``(loaded, precision, info, path, options: ExportOptions) -> dict``: writes the float file at ``path`` and
    #: returns the options its manifest record keeps
    exporter: Lazy
    float_precisions: tuple[Precision, ...]  # what the exporter makes; the first when none is asked for
    #: ``(job, precision, tmp) -> Made`` (:mod:`edgeship.quantize.common`)
    quantizer: Lazy
    quantized_precisions: tuple[Precision, ...]
    default_quantized: tuple[Precision, ...]  # what ``quantize`` makes when no precision is asked for
    runtimes: tuple[Runtime, ...]  # the first available one runs the files
    #: Portability: int8 files also run through a second kernel path of their runtime whose arithmetic does not
    #: depend on the CPU's 8-bit instructions (policy: kernel_path_* gates); None: the format has none
    kernel_path: Runtime | None = None
    #: ``(path) -> Precision`` for a file no manifest records; None: the default float precision
    precision_probe: Lazy | None = None

    @property
    def runtime(self) -> Runtime:
        """The runtime that runs this format's files on this platform."""
        return next(r for r in self.runtimes if r.available)

    @property
    def default_precision(self) -> Precision:
        return self.float_precisions[0]


FORMATS: dict[Format, FormatSpec] = {
    Format.TFLITE: FormatSpec(
        Format.TFLITE, ".tflite", directory=False,
        exporter=Lazy("edgeship.export.tflite:export_file"),
        float_precisions=(Precision.FP32, Precision.FP16),
        quantizer=Lazy("edgeship.quantize.formats.tflite:quantize_tflite_file"),
        # w8: the converter's dynamic-range mode (int8 weights, activations quantised on the fly); fp16: its
        # float16-weight mode
        quantized_precisions=(Precision.INT8, Precision.W8, Precision.FP16), default_quantized=(Precision.INT8,),
        runtimes=(Runtime("litert", Lazy("edgeship.runtimes.litert:LiteRTRunner")),),
        kernel_path=Runtime("litert-reference", Lazy("edgeship.runtimes.litert:LiteRTReferenceRunner"),
                            what="LiteRT reference kernels (BUILTIN_REF, int32 loops) against XNNPACK"),
        precision_probe=Lazy("edgeship.runtimes.litert:guess_precision"),
    ),
    Format.ONNX: FormatSpec(
        Format.ONNX, ".onnx", directory=False,
        exporter=Lazy("edgeship.export.onnx:export_file"),
        float_precisions=(Precision.FP32,),
        quantizer=Lazy("edgeship.quantize.formats.onnx:quantize_onnx_file"),
        quantized_precisions=(Precision.INT8,), default_quantized=(Precision.INT8,),
        runtimes=(Runtime("onnxruntime", Lazy("edgeship.runtimes.onnxrt:OnnxRuntimeRunner")),),
        kernel_path=Runtime("onnxruntime-unfused", Lazy("edgeship.runtimes.onnxrt:OnnxRuntimeUnfusedRunner"),
                            what="ONNX Runtime unfused graph (ORT_DISABLE_ALL: DequantizeLinear, float op, "
                                 "QuantizeLinear) against its fused int8 kernels"),
        precision_probe=Lazy("edgeship.runtimes.onnxrt:guess_precision"),
    ),
    Format.COREML: FormatSpec(
        Format.COREML, ".mlpackage", directory=True,
        exporter=Lazy("edgeship.export.coreml:export_file"),
        float_precisions=(Precision.FP16, Precision.FP32),
        quantizer=Lazy("edgeship.quantize.formats.coreml:quantize_coreml_file"),
        quantized_precisions=(Precision.W8, Precision.W8A8), default_quantized=(Precision.W8, Precision.W8A8),
        # Core ML predicts only on macOS; elsewhere edgeship's NumPy executor runs the ML Program
        runtimes=(Runtime("coreml", Lazy("edgeship.runtimes.coreml:CoreMLRunner"), platforms=("darwin",)),
                  Runtime("coreml-reference", Lazy("edgeship.runtimes.coreml_reference:CoreMLReferenceRunner"))),
    ),
}


def format_of(suffix: str) -> Format | None:
    """The format whose files end in ``suffix`` (".tflite"; any case), or None."""
    return next((f for f, spec in FORMATS.items() if spec.suffix == suffix.lower()), None)
