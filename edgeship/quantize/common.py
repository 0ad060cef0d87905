"""What every quantiser shares: the statistics (computed once per run), the job it is given, and what it returns.

A quantiser is one function per format (``quantize_tflite``, ``quantize_onnx``, ``quantize_coreml``, chosen from
:data:`edgeship.quantize.QUANTIZERS`) with one signature::

    quantizer(job: Job, precision: Precision, tmp: Path) -> Made

It writes the file at ``tmp`` (a temporary name the stage renames when complete) and returns its recipe, its
manifest options and its per-layer report; the stage records them. It reads the calibration statistics from
``job.stats``, computed once by :func:`compute_statistics` for every format that derives from the int8 TFLite.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgeship.types import Format, Precision

if TYPE_CHECKING:  # light at import: the stage's modules load TensorFlow and the converters when they run
    from edgeship.export.common import ModelInfo
    from edgeship.models.loading import LoadedModel
    from edgeship.quantize.calibration import CalibrationSet

#: Calibration samples the per-layer SQNR is measured on (every intermediate tensor is kept per sample).
LAYER_SAMPLES = 32


@dataclass
class Statistics:
    """The calibration, done once: the int8 TFLite every int8 file derives from (the ONNX carries its
    parameters), its float fallback if asked, and its per-layer SQNR against float (dB)."""

    int8: Any  # quantize.tflite.TFLiteQuantResult
    fallback: Any = None  # quantize.fallback.Fallback, when layers were kept in float
    layer_sqnr: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """What a quantiser is given. ``options``: the run's options as the recipes record them; ``ranges``: the
    range options of the int8 TFLite (``io_dtype``, ``relu6_fixed``, ``input_range``); ``float_artifact(fmt)``:
    the float export of ``fmt`` in ``out_dir`` (exported on the way when missing), as its manifest record."""

    loaded: LoadedModel
    info: ModelInfo
    cal: CalibrationSet
    out_dir: Path
    options: dict[str, Any]
    ranges: dict[str, Any]
    onnx_method: str
    float_artifact: Callable[[Format], Any]
    stats: Statistics | None = None
    progress: Callable[[str], None] = lambda text: None
    warn: Callable[[str], None] = lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr)

    def recipe(self, from_int8_tflite: bool) -> dict[str, Any]:
        """The start of every calibrated file's recipe: the calibration set, the options, and the float fallback
        when the file derives from the int8 TFLite that kept layers in float."""
        recipe: dict[str, Any] = {"calibration": self.cal.describe(), "options": self.options}
        if from_int8_tflite and self.stats is not None and self.stats.fallback is not None:
            recipe["float_fallback"] = self.stats.fallback.describe()
        return recipe


@dataclass
class Made:
    """What a quantiser returns: its ``recipe`` (``<file>.recipe.json``), its manifest ``options``, and its
    per-layer SQNR report in dB (``None`` or empty: the file gets none)."""

    recipe: dict[str, Any]
    options: dict[str, Any]
    layer_sqnr: dict[str, float] | None = None


def compute_statistics(job: Job, keep_float: str | int | None, max_drop: float) -> Statistics:
    """Calibrate the model once and make the int8 TFLite (ReLU6 fixed ranges, the preprocessing's input range),
    keep layers in float if asked (:mod:`edgeship.quantize.fallback`), and measure each layer's SQNR."""
    from edgeship.quantize.layers import layer_sqnr, tensor_sqnr
    from edgeship.quantize.tflite import calibrate, quantize_calibrated

    calibrated = calibrate(job.loaded, job.cal.inputs)
    int8 = quantize_calibrated(calibrated, **job.ranges)
    if job.ranges["relu6_fixed"] and not int8.relu6_tensors:
        job.warn("the model has no ReLU6 outputs: the fixed-range mode has nothing to do, every activation was "
                 "calibrated")
    stats = Statistics(int8)
    if keep_float is not None:
        from edgeship.quantize.fallback import keep_float as fall_back

        sqnr = tensor_sqnr(calibrated, int8.model, job.cal.inputs, max_samples=LAYER_SAMPLES)
        stats.fallback = fall_back(calibrated, int8, job.cal.inputs, sqnr, keep_float, max_drop=max_drop,
                                   progress=job.progress, **job.ranges)
        stats.int8 = stats.fallback.result
        if not stats.fallback.met:
            job.warn(f"keeping {len(stats.fallback.kept)} layers in float reached {stats.fallback.agreement:.1%} "
                     f"top-1 agreement on the calibration set, short of the {stats.fallback.target:.1%} asked "
                     f"(--max-drop {max_drop})")
    stats.layer_sqnr = layer_sqnr(calibrated, stats.int8.model, job.cal.inputs, max_samples=LAYER_SAMPLES)
    return stats


def portability_record(fmt: Format, data: bytes) -> dict[str, Any]:
    """The static portability check of an int8 file before it is written (:mod:`edgeship.quantize.portability`):
    its record for the recipe; raises ConversionError, naming the layer, if a known kernel path could saturate."""
    from edgeship.quantize.portability import check_onnx, check_tflite, ensure_portable

    report = check_tflite(data) if fmt is Format.TFLITE else check_onnx(data)
    ensure_portable(report, f"the int8 {fmt.value} file")
    return report.to_dict()


def needs_int8_tflite(fmt: Format, precision: Precision, onnx_method: str) -> bool:
    """Whether a file is made from the calibrated int8 TFLite: the int8 TFLite itself, and the int8 ONNX unless
    ONNX Runtime quantises the float ONNX on its own (``onnx_method`` other than "tflite")."""
    return precision is Precision.INT8 and (fmt is Format.TFLITE or (fmt is Format.ONNX and onnx_method == "tflite"))
