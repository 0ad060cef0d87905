"""``edgeship run``: the whole pipeline — export, quantise, validate and report — from one
``edgeship.toml``.

Example ``edgeship.toml`` (every key optional; relative paths are relative to the file)::

    [model]
    path = "models/classifier.keras"     # or a variant name; default: the embedded demo
    labels = "models/labels.txt"
    trust = false
    mean = [123.675, 116.28, 103.53]     # declared preprocessing, 0-255 pixel units (one number or three);
    std = [58.395, 57.12, 57.375]        # default: the model's own (found in its graph, else (x - 127.5) / 127.5)
    bgr = false                          # the model expects BGR channel order
    bake_preprocessing = false           # make mean/std/BGR the model's first op: files take raw RGB pixels

    [export]
    formats = ["tflite", "onnx", "coreml"]
    precisions = ["fp32", "fp16"]        # default: each format's own (TFLite/ONNX fp32, Core ML fp16)
    onnx_layout = "nhwc"

    [quantize]
    formats = ["tflite", "onnx", "coreml"]   # default: the exported formats; [] skips quantising
    calibration = "data/calibration"     # default: the demo calibration set
    num_samples = 200
    relu6_fixed = true
    precisions = ["int8", "w8", "w8a8"]  # default: each format's (int8 TFLite/ONNX, Core ML w8 and w8a8)
    onnx_method = "tflite"               # or minmax/entropy/percentile: ONNX Runtime's quantize_static
    bias_correction = true               # correct the mean output shift of int8 weights
    weight_rounding = "nearest"          # or "adaptive": int8 steps chosen on the calibration set (AdaRound)
    cross_layer_equalization = false     # equalise depthwise -> pointwise pairs first (edgeship.quantize.equalization)
    activation_ranges = "minmax"         # or mse/percentile: per-tensor range search (edgeship.quantize.ranges)
    keep_float = "auto"                  # the float fallback: "auto" or a number of ops (default: none)
    max_drop = 0.01                      # with keep_float = "auto": the top-1 disagreement allowed
    max_size = "1.3x"                    # the fallback's budget for the int8 TFLite: bytes ("5MB") or a ratio

    [validate]
    data = "data/heldout"                # default: the demo held-out set
    policy = "release-policy.toml"
    require = ["tflite", "onnx"]
    threads = 1
    iterations = 50
    kernel_path_samples = 500            # int8 files also through a second kernel path (0: off)
    expect_accuracy = 0.9                # the contract check: the reference's top-1 accuracy on labelled data

    [output]
    dir = "edgeship-out"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeship.errors import UserError
from edgeship.fileio import read_structured
from edgeship.models.registry import looks_like_variant_name
from edgeship.types import Format
from edgeship.validate.results import Report

_KNOWN = {
    "model": {"path", "labels", "trust", "mean", "std", "bgr", "bake_preprocessing"},
    "export": {"formats", "precisions", "onnx_layout"},
    "quantize": {"formats", "calibration", "num_samples", "relu6_fixed", "seed", "precisions", "onnx_method",
                 "bias_correction", "weight_rounding", "cross_layer_equalization", "activation_ranges", "keep_float",
                 "max_drop", "max_size"},
    "validate": {"data", "policy", "require", "threads", "iterations", "kernel_path_samples", "expect_accuracy"},
    "output": {"dir"},
}


@dataclass
class RunConfig:
    model: str | None = None
    labels: str | None = None
    trust_model: bool = False
    mean: tuple[float, float, float] | None = None  # None: the model's own
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    bake_preprocessing: bool = False
    formats: list[str] = field(default_factory=lambda: [f.value for f in Format])
    precisions: list[str] | None = None
    onnx_layout: str = "nhwc"
    quantize_formats: list[str] | None = None  # None: the exported formats
    calibration: str | None = None
    num_samples: int = 200
    relu6_fixed: bool = True
    seed: int = 0
    quantize_precisions: list[str] | None = None  # None: each format's defaults
    onnx_method: str = "tflite"
    bias_correction: bool = True
    weight_rounding: str = "nearest"
    cross_layer_equalization: bool = False
    activation_ranges: str = "minmax"
    keep_float: str | int | None = None
    max_drop: float = 0.01
    max_size: str | None = None
    data: str | None = None
    policy: str | None = None
    require: list[str] = field(default_factory=list)
    threads: int = 1
    iterations: int = 50
    kernel_path_samples: int = 500
    expect_accuracy: float | None = None
    out: Path = Path("edgeship-out")


def load_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    p = Path(path)
    data = read_structured(p, "config")
    for table, keys in data.items():
        if table not in _KNOWN or not isinstance(keys, dict):
            raise UserError(f"{p}: unknown table [{table}]; use {', '.join(f'[{t}]' for t in _KNOWN)}")
        unknown = set(keys) - _KNOWN[table]
        if unknown:
            raise UserError(f"{p}: [{table}] has unknown keys {sorted(unknown)}; known: {sorted(_KNOWN[table])}")
    base = p.parent

    def rel(value: Any) -> str | None:
        """Paths are relative to the config file; a variant name stays a name."""
        if value is None:
            return None
        text = str(value)
        if Path(text).is_absolute() or (looks_like_variant_name(text) and not (base / text).exists()):
            return text
        return str(base / text)

    m, e, q, v, o = (data.get(t, {}) for t in ("model", "export", "quantize", "validate", "output"))
    cfg = RunConfig(
        model=rel(m.get("path")), labels=rel(m.get("labels")), trust_model=bool(m.get("trust", False)),
        formats=list(e.get("formats", RunConfig().formats)), precisions=e.get("precisions"),
        onnx_layout=str(e.get("onnx_layout", "nhwc")), quantize_formats=q.get("formats"),
        calibration=rel(q.get("calibration")), num_samples=int(q.get("num_samples", 200)),
        relu6_fixed=bool(q.get("relu6_fixed", True)), seed=int(q.get("seed", 0)),
        quantize_precisions=q.get("precisions"), onnx_method=str(q.get("onnx_method", "tflite")),
        weight_rounding=str(q.get("weight_rounding", "nearest")),
        cross_layer_equalization=bool(q.get("cross_layer_equalization", False)),
        activation_ranges=str(q.get("activation_ranges", "minmax")),
        bias_correction=bool(q.get("bias_correction", True)), keep_float=q.get("keep_float"),
        max_drop=float(q.get("max_drop", 0.01)), max_size=None if q.get("max_size") is None else str(q["max_size"]),
        data=rel(v.get("data")), policy=rel(v.get("policy")),
        require=list(v.get("require", [])), threads=int(v.get("threads", 1)), iterations=int(v.get("iterations", 50)),
        kernel_path_samples=int(v.get("kernel_path_samples", 500)),
        mean=_triplet(m.get("mean"), f"{p}: [model] mean"), std=_triplet(m.get("std"), f"{p}: [model] std"),
        bgr=bool(m.get("bgr", False)), bake_preprocessing=bool(m.get("bake_preprocessing", False)),
        expect_accuracy=None if v.get("expect_accuracy") is None else float(v["expect_accuracy"]),
        out=Path(rel(o.get("dir")) or "edgeship-out"),
    )
    return cfg


def _triplet(value: Any, what: str) -> tuple[float, float, float] | None:
    """A number or a list of three numbers (0-255 pixel units) -> three floats; None stays None."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{what} must be a number or a list of three numbers (0-255 pixel units), got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def run(config: RunConfig, echo: Callable[[str], None] = print) -> Report:
    from edgeship.export import export
    from edgeship.models.loading import load_model
    from edgeship.validate.pipeline import validate
    from edgeship.validate.reports import summary_table

    start = time.perf_counter()
    from edgeship.models.loading import declare_preprocessing

    notes: list[str] = []
    loaded = load_model(config.model, trust_model=config.trust_model, labels=config.labels, echo=notes.append)
    declare_preprocessing(loaded, mean=config.mean, std=config.std, bgr=config.bgr,
                          what="[model] mean/std/bgr")
    for note in notes:
        echo(note)
    if config.bake_preprocessing:
        from edgeship.models.bake import bake_preprocessing

        loaded = bake_preprocessing(loaded)
    spec = loaded.spec
    echo(f"edgeship run: {spec.name} ({loaded.source_path}; {spec.input_shape[0]}x{spec.input_shape[1]}, "
         f"{spec.num_classes} classes) -> {config.out}")
    t0 = time.perf_counter()
    result = export(loaded=loaded, formats=config.formats, out=config.out, precisions=config.precisions,
                    onnx_layout=config.onnx_layout)
    echo(f"exported {len(result.paths)} artifacts in {time.perf_counter() - t0:.1f} s")
    quantize_formats = config.formats if config.quantize_formats is None else config.quantize_formats
    if quantize_formats:
        from edgeship.quantize import quantize

        t0 = time.perf_counter()
        q = quantize(loaded=loaded, calibration=config.calibration, formats=quantize_formats, out=config.out,
                     num_samples=config.num_samples, seed=config.seed, relu6_fixed=config.relu6_fixed,
                     precisions=config.quantize_precisions, onnx_method=config.onnx_method,
                     weight_rounding=config.weight_rounding, activation_ranges=config.activation_ranges,
                     cross_layer_equalization=config.cross_layer_equalization,
                     bias_correction=config.bias_correction, keep_float=config.keep_float,
                     max_drop=config.max_drop, max_size=config.max_size)
        echo(f"quantised {len(q.paths)} artifacts in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    report_dir = config.out / "report"
    report = validate([config.out], reference=loaded, data=config.data, policy=config.policy, report_dir=report_dir,
                      require=config.require, threads=config.threads, iterations=config.iterations,
                      kernel_path_samples=config.kernel_path_samples, expect_accuracy=config.expect_accuracy)
    echo(f"validated on {report.data['count']} images in {time.perf_counter() - t0:.1f} s")
    echo(summary_table(report))
    echo(f"reports: {report_dir}/report.md  report.html  report.json  junit.xml")
    echo(f"{'PASSED' if report.passed else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return report
