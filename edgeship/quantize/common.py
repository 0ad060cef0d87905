"""What every quantiser shares: the statistics (computed once per run), the job it is given, and what it returns.

A quantiser is one function per format (``quantize_tflite``, ``quantize_onnx``, ``quantize_coreml``, chosen from
:data:`edgeship.quantize.QUANTIZERS`) with one signature::

    quantizer(job: Job, precision: Precision, tmp: Path) -> Made

It writes the file at ``tmp`` (a temporary name the stage renames when complete) and returns its recipe, its
manifest options and its per-layer report; the stage records them. It reads the calibration statistics from
``job.stats``, computed once by :func:`edgeship.quantize.ptq.compute_statistics` for every format that derives from the int8 TFLite.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from edgeship.types import Format, Precision

if TYPE_CHECKING:  # light at import: the stage's modules load TensorFlow and the converters when they run
    from edgeship.export.common import ModelInfo
    from edgeship.models.loading import LoadedModel
    from edgeship.quantize.calibration import CalibrationSet
    from edgeship.quantize.options import OnnxMethod

#: Calibration samples the per-layer SQNR is measured on (every intermediate tensor is kept per sample).
LAYER_SAMPLES = 32


@dataclass(frozen=True)
class Statistics:
    """The calibration, done once (:func:`edgeship.quantize.ptq.compute_statistics`): the int8 TFLite every int8
    file derives from (the ONNX carries its parameters; a ``TFLiteQuantResult``), its per-layer SQNR against
    float (dB), the float fallback (a ``techniques.fallback.Fallback``) when layers were kept in float, and the
    flatbuffer steps' ``records`` in the order the recipes write them."""

    int8: Any
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    fallback: Any = None
    records: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """What a quantiser is given, for one file. ``options``: the run's options as the recipes record them;
    ``ranges``: the int8 TFLite's conversion options (``io_dtype``, ``relu6_fixed``, ``input_range``);
    ``floats``: the float exports to start from (:class:`FloatArtifacts`, through :meth:`float_artifact`);
    ``stats``: the statistics computed once (:class:`Statistics`; None when no file derives
    from the int8 TFLite); ``weights``: the records of the weight steps in force for this file
    (:func:`edgeship.quantize.ptq.weights_applied`; empty for a file without int8 weights)."""

    loaded: LoadedModel
    info: ModelInfo
    cal: CalibrationSet
    out_dir: Path
    options: Mapping[str, Any]
    ranges: Mapping[str, Any]
    onnx_method: OnnxMethod
    floats: FloatArtifacts
    stats: Statistics | None = None
    weights: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda text: None
    warn: Callable[[str], None] = lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr)

    @property
    def rounding(self) -> dict[str, Any] | None:
        """The adaptive weight rounding in force for this file (its record), if any."""
        return self.weights.get("weight_rounding")

    @property
    def correction(self) -> dict[str, Any] | None:
        """The bias correction in force for this file (its record), if any."""
        return self.weights.get("bias_correction")

    def float_artifact(self, fmt: Format) -> Path:
        """The float export of ``fmt`` this file starts from: with the weight steps in force when there are."""
        return self.floats(fmt, corrected=bool(self.weights))

    def recipe(self, from_int8_tflite: bool) -> dict[str, Any]:
        """The start of every calibrated file's recipe: the calibration set, the options, the weight steps in
        force, and for a file derived from the int8 TFLite the flatbuffer steps' records."""
        recipe: dict[str, Any] = {"calibration": self.cal.describe(), "options": self.options, **self.weights}
        if from_int8_tflite and self.stats is not None:
            recipe.update(self.stats.records)
        return recipe


class FloatArtifacts:
    """The float exports a quantiser starts from (Core ML's w8/w8a8, ORT's ``quantize_static``): the one in the
    output directory, exported there when missing; while bias correction is in force (``corrected``), an export
    of the corrected model in a private temporary directory (the output directory's float files stay the
    trained model's, and are made all the same). The only state it keeps is that cache.
    ``manifest``: the output directory's manifest, re-read after an export into it."""

    def __init__(self, loaded: LoadedModel, out_dir: Path) -> None:
        from edgeship.export import open_manifest

        self.loaded, self.out_dir = loaded, out_dir
        self.manifest = open_manifest(out_dir, loaded)
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

    def __call__(self, fmt: Format, corrected: bool = False) -> Path:
        """The float export of ``fmt``; ``corrected``: of the model as it is now, with the weight steps in force."""
        from edgeship.export import export

        if self._find(fmt) is None:  # the trained model's float export, in the output directory as always
            if corrected:
                raise RuntimeError(f"no float {fmt.value} export to start from: FloatArtifacts.prepare() must make "
                                   "it before the weights are corrected")
            self.prepare({fmt})
        if corrected:
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
