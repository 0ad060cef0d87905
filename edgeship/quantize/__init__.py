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

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeship.types import Format, Precision

#: The precisions this stage can produce per format, the default ones first (policy as data, like
#: export.FLOAT_PRECISIONS). TFLite ``w8`` is the converter's dynamic-range mode (int8 weights, float
#: activations quantised on the fly); ``fp16`` its float16-weight mode.
QUANTIZED_PRECISIONS: dict[Format, tuple[Precision, ...]] = {
    Format.TFLITE: (Precision.INT8, Precision.W8, Precision.FP16),
    Format.ONNX: (Precision.INT8,),
    Format.COREML: (Precision.W8, Precision.W8A8),
}
#: What ``quantize`` makes when no precision is asked for.
DEFAULT_PRECISIONS: dict[Format, tuple[Precision, ...]] = {
    Format.TFLITE: (Precision.INT8,),
    Format.ONNX: (Precision.INT8,),
    Format.COREML: (Precision.W8, Precision.W8A8),
}

__all__ = ["DEFAULT_PRECISIONS", "QUANTIZED_PRECISIONS", "quantize", "QuantizeResult", "plan"]


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

#: Calibration samples the per-layer SQNR is measured on (every intermediate tensor is kept per sample).
LAYER_SAMPLES = 32


@dataclass
class QuantizeResult:
    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    recipes: list[Path] = field(default_factory=list)
    fixed_tensors: list[str] = field(default_factory=list)
    calibrated_tensors: list[str] = field(default_factory=list)
    layer_sqnr: dict[str, float] = field(default_factory=dict)  # int8 TFLite/ONNX activations vs float, dB
    layer_reports: dict[str, dict[str, float]] = field(default_factory=dict)  # artifact file name -> {layer: dB}
    fallback: Any = None  # a quantize.fallback.Fallback when layers were kept in float


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
    precisions: Sequence[Precision | str] | None = None,
    onnx_method: str = "tflite",
    progress: bool = True,
    warn: Any = None,
) -> QuantizeResult:
    from tqdm import tqdm

    from edgeship.errors import UserError
    from edgeship.export import ModelInfo, export, open_manifest
    from edgeship.export.common import artifact_name
    from edgeship.export.tflite_metadata import add_metadata
    from edgeship.fileio import atomic_path, ensure_output_dir, sha256_path, size_on_disk, write_bytes_atomic
    from edgeship.manifest import ArtifactRecord
    from edgeship.models.loading import load_model
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.fallback import parse_keep_float
    from edgeship.quantize.onnx import CALIBRATION_METHODS
    from edgeship.quantize.tflite import calibrate, quantize_calibrated

    keep_float = parse_keep_float(keep_float)
    onnx_method = onnx_method.strip().lower()
    if onnx_method not in ("tflite", *CALIBRATION_METHODS):
        raise UserError(f"unknown --onnx-method '{onnx_method}': choose from tflite (the int8 TFLite's parameters, "
                        f"bit-exact), {', '.join(CALIBRATION_METHODS)} (ONNX Runtime's quantize_static)")
    fmts = [Format.parse(f, "format") if isinstance(f, str) else Format(f) for f in formats]
    todo = plan(fmts, precisions)
    # What is made from the calibrated int8 TFLite: itself, and the ONNX unless ORT quantises that on its own.
    from_tflite = {(Format.TFLITE, Precision.INT8)} | ({(Format.ONNX, Precision.INT8)} if onnx_method == "tflite"
                                                         else set())
    out_dir = ensure_output_dir(Path(out))
    loaded = loaded or load_model(model, trust_model=trust_model, labels=labels)
    spec = loaded.spec
    info = ModelInfo.default_for(spec.name, spec.num_classes)
    warn = warn or (lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr))
    cal = load_calibration(calibration, spec, num_samples=num_samples, seed=seed, warn=warn)
    manifest = open_manifest(out_dir, loaded)
    result = QuantizeResult(out_dir)
    steps: list[Any] = ["calibrate", *todo]
    bar = tqdm(steps, desc="quantize", unit="step", disable=None if progress else True, leave=False)
    options = {"relu6_fixed": relu6_fixed, "io_dtype": io_dtype, "num_samples": len(cal.images), "seed": seed,
               "input_range": list(spec.preprocessing.value_range), "weights": "int8 per-channel, symmetric",
               "keep_float": keep_float, "max_drop": max_drop if keep_float == "auto" else None}

    def record(path: Path, fmt: Format, precision: Precision, opts: dict[str, Any], recipe: dict[str, Any],
               sqnr: dict[str, float] | None = None) -> None:
        if precision is Precision.INT8 and sqnr is None:  # the ONNX has the TFLite's parameters
            sqnr = result.layer_sqnr
        if sqnr:
            from edgeship.quantize.layers import write_layer_report

            write_layer_report(path, sqnr, min(LAYER_SAMPLES, len(cal.images)))
            result.layer_reports[path.name] = sqnr
        recipe_path = path.with_name(path.name + ".recipe.json")
        write_bytes_atomic(recipe_path, (json.dumps(recipe, indent=1) + "\n").encode())
        manifest.add(ArtifactRecord(path=path.name, format=fmt, precision=precision, sha256=sha256_path(path),
                                    size_bytes=size_on_disk(path), options=opts))
        manifest.save(out_dir)
        result.paths.append(path)
        result.recipes.append(recipe_path)

    def float_artifact(fmt: Format) -> Any:
        """The float export of ``fmt`` in the output directory (exported now when it is not there)."""
        nonlocal manifest

        def find() -> Any:
            return next((a for a in manifest.artifacts if a.format is fmt
                         and a.precision in (Precision.FP16, Precision.FP32) and (out_dir / a.path).exists()), None)

        if find() is None:
            export(loaded=loaded, formats=[fmt], out=out_dir, progress=False)
            manifest = open_manifest(out_dir, loaded)
        return find()

    int8 = None
    ranges = dict(io_dtype=io_dtype, relu6_fixed=relu6_fixed, input_range=spec.preprocessing.value_range)
    for step in bar:
        bar.set_postfix_str(step if step == "calibrate" else f"{step[0].value} {step[1].value}")
        if step == "calibrate":
            if from_tflite & set(todo):
                from edgeship.quantize.layers import layer_sqnr, tensor_sqnr

                calibrated = calibrate(loaded, cal.inputs)  # the statistics, once, for every format
                int8 = quantize_calibrated(calibrated, **ranges)
                result.fixed_tensors, result.calibrated_tensors = int8.fixed_tensors, int8.calibrated_tensors
                if relu6_fixed and not int8.relu6_tensors:
                    warn("the model has no ReLU6 outputs: the fixed-range mode has nothing to do, every activation "
                         "was calibrated")
                if keep_float is not None:
                    from edgeship.quantize.fallback import keep_float as fall_back

                    sqnr = tensor_sqnr(calibrated, int8.model, cal.inputs, max_samples=LAYER_SAMPLES)
                    result.fallback = fall_back(calibrated, int8, cal.inputs, sqnr, keep_float, max_drop=max_drop,
                                                progress=bar.set_postfix_str, **ranges)
                    int8 = result.fallback.result
                    if not result.fallback.met:
                        warn(f"keeping {len(result.fallback.kept)} layers in float reached "
                             f"{result.fallback.agreement:.1%} top-1 agreement on the calibration set, short of "
                             f"the {result.fallback.target:.1%} asked (--max-drop {max_drop})")
                result.layer_sqnr = layer_sqnr(calibrated, int8.model, cal.inputs, max_samples=LAYER_SAMPLES)
            continue
        fmt, precision = step
        path = out_dir / artifact_name(spec.name, fmt, precision)
        recipe = {"calibration": cal.describe(), "options": options}
        if result.fallback is not None and step in from_tflite:
            recipe["float_fallback"] = result.fallback.describe()
        if fmt is Format.TFLITE and precision is not Precision.INT8:
            from edgeship.quantize.tflite import convert_weights_only

            with atomic_path(path) as tmp:
                tmp.write_bytes(add_metadata(convert_weights_only(loaded, precision), spec, info))
            recipe = {"options": {"mode": "dynamic-range: int8 weights per channel, float activations"
                                  if precision is Precision.W8 else "float16 weights"}}
            record(path, fmt, precision, {"input_dtype": "float32", "metadata": "tflite", **recipe["options"]},
                   recipe)
        elif fmt is Format.TFLITE:
            assert int8 is not None
            recipe["portability"] = _portability(Format.TFLITE, int8.model)
            with atomic_path(path) as tmp:
                tmp.write_bytes(add_metadata(int8.model, spec, info))
            recipe["tensors"] = int8.tensor_params
            record(path, fmt, Precision.INT8, {"input_dtype": io_dtype, "metadata": "tflite", **options}, recipe)
        elif fmt is Format.ONNX and onnx_method != "tflite":  # ORT's own calibration of the float ONNX
            from edgeship.quantize.onnx import quantize_onnx_static

            float_onnx = float_artifact(Format.ONNX)
            with atomic_path(path) as tmp:
                quantize_onnx_static(out_dir / float_onnx.path, cal.inputs, tmp, onnx_method)
                recipe["portability"] = _portability(Format.ONNX, tmp.read_bytes())
            recipe["source"] = (f"onnxruntime.quantization.quantize_static of {float_onnx.path}: QDQ, per-channel "
                                f"int8 weights, uint8 activations, {onnx_method} calibration (ReLU6 outputs "
                                "calibrated, not fixed; not bit-exact to the .tflite)")
            record(path, fmt, Precision.INT8, {"input_dtype": "float32", "source": f"onnxruntime {onnx_method}",
                                               **options}, recipe, {})
        elif fmt is Format.ONNX:
            from edgeship.quantize.onnx import onnx_from_tflite

            assert int8 is not None
            # Rewritten from the very int8 TFLite shipped for Android: the same I/O type and parameters.
            fell_back: list[str] = []
            data = onnx_from_tflite(int8.model, loaded, info, warn=lambda msg: (fell_back.append(msg), warn(msg)))
            recipe["portability"] = _portability(Format.ONNX, data)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            recipe["tensors"] = int8.tensor_params
            recipe["source"] = (f"tf2onnx.convert.from_tflite of the int8 TFLite ({fell_back[0]})" if fell_back else
                                "the int8 TFLite rewritten op by op as ONNX QDQ (edgeship.quantize.onnx_qdq): its "
                                "int8 parameters, uint8 activations (zero point + 128), weights stored as uint8 "
                                "with zero point 128 (U8U8, edgeship.quantize.portability), NCHW inside")
            record(path, fmt, Precision.INT8, {"input_dtype": io_dtype, "layout": "nhwc", **options}, recipe)
        elif fmt is Format.COREML:
            from edgeship.quantize.coreml import coreml_layer_sqnr, quantize_coreml_w8, quantize_coreml_w8a8

            float_rec = float_artifact(Format.COREML)
            with atomic_path(path) as tmp:
                if precision is Precision.W8A8:  # calibrated through the NumPy executor: on Linux too
                    coreml_recipe = quantize_coreml_w8a8(out_dir / float_rec.path, tmp, cal.images,
                                                         relu6_fixed=relu6_fixed, progress=bar.set_postfix_str)
                else:
                    coreml_recipe = quantize_coreml_w8(out_dir / float_rec.path, tmp)
                sqnr = coreml_layer_sqnr(out_dir / float_rec.path, tmp, cal.images, max_samples=LAYER_SAMPLES)
            recipe.update(coreml_recipe)
            record(path, fmt, precision, {"from": float_rec.path, "input_type": "image",
                                          "output": "classLabel"}, recipe, sqnr)
    return result


def _portability(fmt: Format, data: bytes) -> dict[str, Any]:
    """The static portability check of an int8 file before it is written (:mod:`edgeship.quantize.portability`):
    its record for the recipe; raises ConversionError, naming the layer, if a known kernel path could saturate."""
    from edgeship.quantize.portability import check_onnx, check_tflite, ensure_portable

    report = check_tflite(data) if fmt is Format.TFLITE else check_onnx(data)
    ensure_portable(report, f"the int8 {fmt.value} file")
    return report.to_dict()
