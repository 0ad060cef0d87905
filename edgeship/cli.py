"""The ``edgeship`` command: a thin shell over the library. Heavy frameworks are imported only inside the
command that needs them, so ``edgeship --help`` is instant.

Exit codes (a contract, :mod:`edgeship.errors`): 0 success; 1 a release gate failed; 2 bad input or usage; 3 the
environment (disk full, permission denied, an unwritable output or report directory, a missing runtime); 4 a bug in
edgeship; 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM). Every failure is one line on stderr without a
traceback; ``EDGESHIP_DEBUG=1`` shows the traceback. Interrupted or terminated, no temporary or partial file is
left (:mod:`edgeship.fileio`).

Over 400 lines on purpose: every subcommand's handler beside the argument groups it shares with the others
(model, data, executor, output); each handler is a few lines over its stage's options object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgeship import __version__
from edgeship.errors import EnvironmentProblem, UserError, from_os_error
from edgeship.types import OutputKind

DEFAULT_OUT = "edgeship-out"
INTERNAL_ERROR = 4  # a bug in edgeship: not 1, which a pipeline reads as "a gate failed"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) rather than the usage block plus the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"edgeship: error: {message} (see '{self.prog} --help')\n")


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (``--iterations -1``, ``--threads 0`` are usage errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME|PATH",
                   help="a .keras / .h5 / SavedModel path or a variant name (default: the embedded demo model)")
    g.add_argument("--trust-model", action="store_true",
                   help="allow a model with Lambda layers or custom code (runs code from the file)")
    g.add_argument("--labels", metavar="FILE|DIR", help="class labels: a text file, a JSON list or a training folder of "
                   "class folders (default: labels.txt beside the model)")
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean in 0-255 pixel units (V1/V2 default 127.5)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std in 0-255 pixel units (V1/V2 default 127.5)")
    g.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")
    g.add_argument("--force-preprocessing", action="store_true",
                   help="accept a --mean/--std outside every image-model convention (refused otherwise)")
    g.add_argument("--bake-preprocessing", action="store_true",
                   help="make mean/std/BGR the model's first ops: every file takes raw 0-255 RGB (for MediaPipe)")
    g.add_argument("--input-size", metavar="HxW", type=_input_size,
                   help="fix a dynamic input size (None, None, None, 3), e.g. 224x224")
    _output_kind_arg(g)
    _resize_arg(g)


def _input_size(text: str) -> tuple[int, int]:
    """An argparse type: HxW in pixels (a usage error otherwise: one line, exit 2)."""
    from edgeship.models.setups import parse_input_size

    try:
        size = parse_input_size(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--input-size ", "")) from None
    assert size is not None
    return size


def _output_kind_arg(g: Any) -> None:
    g.add_argument("--output-kind", metavar="KIND", choices=[k.value for k in OutputKind],
                   help="probabilities, logits, multilabel, embedding, segmentation or regression (default: "
                        "detected)")


def _model_options(args: argparse.Namespace) -> Any:
    """The model arguments as :class:`edgeship.models.prepare.ModelOptions`, their units checked (unless
    --force-preprocessing): before anything is loaded or written, so a declaration in the wrong units fails in a
    second with nothing made."""
    from edgeship.models.prepare import ModelOptions
    from edgeship.models.spec import parse_triplet

    options = ModelOptions(
        model=args.model, labels=args.labels, trust_model=args.trust_model,
        mean=parse_triplet(args.mean, "--mean") if args.mean else None,
        std=parse_triplet(args.std, "--std") if args.std else None, bgr=args.bgr,
        force_preprocessing=bool(getattr(args, "force_preprocessing", False)),
        output_kind=getattr(args, "output_kind", None) or None,
        bake_preprocessing=bool(getattr(args, "bake_preprocessing", False)),
        input_size=getattr(args, "input_size", None), resize=getattr(args, "resize", None))
    options.check()
    return options


def _load(args: argparse.Namespace, settle_on: str | None = None) -> Any:
    """The model the arguments name, prepared (:func:`edgeship.models.prepare.prepare_model`); ``settle_on``: the
    argument naming the user's images an assumed preprocessing is settled on (``calibration``), when given."""
    from edgeship.models.prepare import prepare_model

    data = getattr(args, settle_on) if settle_on else None
    if data is not None:
        from edgeship.data import open_data

        def images(loaded: Any) -> Any:
            return open_data(data, loaded.spec.input_shape[:2], loaded.spec.labels, input_range=args.input_range,
                             resize=loaded.resize)
    quiet = getattr(args, "quiet", False)
    return prepare_model(_model_options(args), echo=lambda note: None if quiet else print(f"edgeship: {note}",
                                                                                            file=sys.stderr),
                         settle_on=images if data is not None else None)


# ----------------------------------------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from edgeship.models.catalog import describe_models

    rows = describe_models(args.names, trust_model=args.trust_model, layers=args.layers, progress=not args.json)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from edgeship.models.catalog import format_table

    print(format_table(rows, layers=args.layers))
    return 0


# ----------------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    from edgeship.export import ModelInfo, export_with
    from edgeship.export.options import ExportOptions
    from edgeship.types import Format, Precision

    options = ExportOptions.of(formats=Format.parse_list(args.formats, "format"),
                               precisions=Precision.parse_list(args.precisions, "precision") if args.precisions
                               else None,
                               onnx_layout=args.onnx_layout, opset=args.opset, deployment_target=args.deployment_target)
    from edgeship.fileio import check_writable_dir

    check_writable_dir(Path(args.out), option="--out")  # before the model loads: nothing made, exit 3 in a second
    loaded = _load(args)
    info = ModelInfo(
        name=args.name or loaded.spec.name,
        description=args.description or ModelInfo.default_for(loaded.spec.name, loaded.spec.num_classes).description,
        version=args.version, author=args.author, license=args.license,
    )
    result = export_with(options, out=args.out, info=info, loaded=loaded)
    _print_artifacts(result)
    from edgeship.models.loading import describe_input

    print(describe_input(loaded))  # what the files expect, and where it came from (also in the manifest)
    return 0


def _export_args(g: Any) -> None:
    """The export options' arguments: choices and defaults from :class:`edgeship.export.options.ExportOptions`."""
    from edgeship.export.options import FLOAT_PRECISION_CHOICES, MAX_OPSET, CoreMLTarget, ExportOptions
    from edgeship.formats import FORMATS
    from edgeship.types import Format, Layout

    default = ExportOptions()
    names = ",".join(f.value for f in Format)
    g.add_argument("--formats", default=",".join(f.value for f in default.formats),
                   help=f"comma-separated: {names} (default: all)")
    per_format = ", ".join(f"{f.value} {spec.default_precision}" for f, spec in FORMATS.items())
    floats = ", ".join(map(str, FLOAT_PRECISION_CHOICES))
    g.add_argument("--precisions", metavar="LIST",
                   help=f"comma-separated: {floats} (default: each format's own: {per_format})")
    _alias(g, "--precision", "precisions")
    _out_arg(g)
    g.add_argument("--onnx-layout", default=default.onnx_layout.value, choices=[m.value for m in Layout],
                   help=f"ONNX input layout (default {default.onnx_layout})")
    g.add_argument("--opset", type=int, default=default.opset, help=f"ONNX opset (default {default.opset}, at most "
                                                                    f"{MAX_OPSET})")
    g.add_argument("--deployment-target", default=default.deployment_target.value,
                   help=f"Core ML minimum deployment target: {', '.join(m.value for m in CoreMLTarget)} "
                        f"(default {default.deployment_target})")


def _print_artifacts(result: Any) -> None:
    for rec in result.manifest.artifacts:
        if result.out_dir / rec.path in result.paths:
            print(f"{rec.format:<7} {rec.precision:<5} {rec.size_bytes / 1e6:7.2f} MB  {result.out_dir / rec.path}")
    print(f"manifest          {result.manifest_path}")


# ----------------------------------------------------------------------------------------------- quantize
def _cmd_quantize(args: argparse.Namespace) -> int:
    from edgeship.quantize import QuantizeOptions, quantize_with
    from edgeship.types import Format, Precision

    formats = Format.parse_list(args.formats, "format")
    precisions = Precision.parse_list(args.precisions, "precision") if args.precisions else None
    _model_options(args)  # the declared units and labels, before quantize_with makes the output directory
    from edgeship.data import check_data
    from edgeship.models.loading import source_takes_demo_data
    from edgeship.quantize.calibration import DEMO_CALIBRATION

    check_data(args.calibration, DEMO_CALIBRATION if source_takes_demo_data(args.model) else None, args.input_range,
               use_labels=False, option="--calibration")  # before the model loads
    options = QuantizeOptions.parse("edgeship quantize", precisions=precisions, **{
        name: getattr(args, name) for name in QuantizeOptions.model_fields if name != "precisions"})
    loaded: list[Any] = []

    def load() -> Any:
        loaded.append(_load(args, settle_on="calibration"))
        return loaded[-1]

    result = quantize_with(options, formats, args.out, load)
    if result.fixed_tensors or result.calibrated_tensors:
        from edgeship.progress import counted

        print(f"ranges: {counted(len(result.fixed_tensors), 'tensor')} fixed without calibration (ReLU6 outputs -> "
              f"[0, 6], the input -> its preprocessing range), {len(result.calibrated_tensors)} calibrated "
              f"(--activation-ranges {options.effective().activation_ranges})")
    fb = result.fallback
    if fb is not None:
        print(f"kept in float: {', '.join(fb.kept) or 'nothing'} (top-1 agreement with float on the calibration "
              f"set {fb.agreement_before:.1%} -> {fb.agreement:.1%}" + (f", target {fb.target:.1%}" if fb.target else "")
              + f"; int8 TFLite {fb.size_before / 1e6:.2f} -> {fb.size / 1e6:.2f} MB"
              + (f", budget {fb.budget / 1e6:.2f} MB ({fb.budget_text}))" if fb.budget else ")"))
    if result.layer_reports:
        from edgeship.quantize.layers import worst

        for name, sqnr in result.layer_reports.items():
            print(f"worst layers of {name} (quantised vs float SQNR): "
                  + ", ".join(f"{n} {v:.1f} dB" for n, v in worst(sqnr)))
    for path in result.paths:
        print(f"{path}  (recipe: {path.name}.recipe.json)")
    if loaded:
        from edgeship.models.loading import describe_input

        print(describe_input(loaded[-1]))  # what the files expect, and where it came from (also in the manifest)
    return 0


def _quantize_args(p: argparse.ArgumentParser) -> None:
    """The quantize argument group: choices and defaults from :class:`edgeship.quantize.options.QuantizeOptions`
    and its enums (the flags' dests are the options' names). One line of help each: what each option measured
    (dB, minutes) is in docs/cli.md."""
    from edgeship.quantize.options import (ActivationRanges, IoDtype, OnnxMethod, PtqPreset, QuantizeOptions,
                                           WeightRounding)

    default = QuantizeOptions.default

    def choices(enum: Any) -> list[str]:
        return [m.value for m in enum]

    g = p.add_argument_group("quantize")
    g.add_argument("--calibration", metavar="DATA",
                   help="a folder of images (any depth) or an .npy/.npz array (required but for the demo model)")
    g.add_argument("--formats", default="tflite,onnx,coreml", help="comma-separated: tflite,onnx,coreml")
    _input_range_arg(g)
    g.add_argument("--num-samples", type=_count(1), default=default("num_samples"),
                   help=f"calibration samples (default {default('num_samples')})")
    g.add_argument("--seed", type=int, default=default("seed"),
                   help=f"seed for picking the samples (default {default('seed')})")
    g.add_argument("--precisions", metavar="LIST",
                   help="comma-separated: int8, w8, w8a8, fp16 (default: int8 TFLite/ONNX, w8 and w8a8 Core ML)")
    _alias(g, "--precision", "precisions")
    g.add_argument("--ptq", default=default("ptq").value, choices=choices(PtqPreset),
                   help="preset: thorough (default; slower, more accurate) or fast; explicit options win over it")
    g.add_argument("--weight-rounding", default=default("weight_rounding"), choices=choices(WeightRounding),
                   help="int8 weight rounding: adaptive (AdaRound-style, thorough's) or nearest (fast's)")
    g.add_argument("--activation-ranges", default=default("activation_ranges"), choices=choices(ActivationRanges),
                   help="int8 activation ranges: mse (thorough's), minmax (fast's) or percentile")
    g.add_argument("--int8-bias-correction", action=argparse.BooleanOptionalAction,
                   default=default("int8_bias_correction"),
                   help="correct each int8 TFLite/ONNX op's bias on the calibration set (thorough's)")
    g.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="keep the output shift that int8 weights cause (default: corrected)")
    g.add_argument("--no-relu6-fixed", dest="relu6_fixed", action="store_false",
                   help="calibrate ReLU6 outputs too (default: fixed to [0, 6])")
    g.add_argument("--cross-layer-equalization", action="store_true",
                   help="equalise depthwise -> pointwise pairs before quantising (off by default)")
    g.add_argument("--raw-input-compensation", action="store_true",
                   help="uint8 input: fold the zero point's half step into the first bias (off by default)")
    g.add_argument("--io-dtype", default=default("io_dtype").value, choices=choices(IoDtype),
                   help="int8 TFLite input/output type (default uint8: MediaPipe refuses int8 input)")
    g.add_argument("--keep-float", metavar="auto|N",
                   help="keep the costliest ops in float: auto (until within --max-drop) or N ops")
    g.add_argument("--max-drop", type=float, default=default("max_drop"),
                   help=f"with --keep-float auto: top-1 disagreement allowed (default {default('max_drop')})")
    g.add_argument("--max-size", metavar="SIZE",
                   help="with --keep-float: the int8 TFLite's size budget, e.g. 5MB or 1.3x")
    g.add_argument("--onnx-method", default=default("onnx_method").value, choices=choices(OnnxMethod),
                   help="int8 ONNX: tflite (from the int8 TFLite, default) or ORT quantize_static's method")
    _out_arg(g)


# ----------------------------------------------------------------------------------------------- validate
def _validate_args(p: argparse.ArgumentParser) -> None:
    """Validate's options (choices and defaults from :class:`edgeship.validate.options.ValidateOptions`)."""
    from edgeship.validate.options import default as option

    g = p.add_argument_group("validation")
    g.add_argument("--data", metavar="DATA", help="images (class folders give labels) or .npy/.npz (required but for "
                                                  "the demo model)")
    _input_range_arg(g)
    _resize_arg(g, recorded=True)
    g.add_argument("--policy", metavar="FILE", help="TOML release gates merged over the defaults")
    g.add_argument("--require", default="", metavar="FORMATS",
                   help="comma-separated formats that must run here: skipped ones then fail the run")
    g.add_argument("--threads", type=_count(1), default=option("threads"),
                   help=f"threads per runtime (default {option('threads')})")
    g.add_argument("--iterations", type=_count(1), default=option("iterations"),
                   help=f"timed inferences per artifact (default {option('iterations')})")
    g.add_argument("--allow-modified", action="store_true",
                   help="validate files that differ from their manifest record (recorded in the report)")
    g.add_argument("--kernel-path-samples", type=_count(0), default=option("kernel_path_samples"), metavar="N",
                   help="samples each int8 file also runs through its runtime's second kernel path "
                        f"(default {option('kernel_path_samples')}; 0: off)")
    _output_kind_arg(g)
    g.add_argument("--expect-accuracy", type=float, metavar="FRACTION",
                   help="the float model's top-1 accuracy on the labelled data must reach this, e.g. 0.9")
    _release_args(g)


def _release_args(g: argparse._ArgumentGroup) -> None:
    """Release over release and real devices (validate's options, also taken by run)."""
    g.add_argument("--baseline", metavar="PATH",
                   help="a previous report.json (or its directory): no artifact may fall behind it")
    g.add_argument("--latency-from", action="append", default=[], metavar="FILE",
                   help="a LiteRT benchmark_model log from a real device (repeatable), gated by the policy")
    g.add_argument("--device", metavar="NAME", help="the device the --latency-from logs come from, e.g. 'Pixel 7'")


def _input_range_arg(g: "argparse._ArgumentGroup") -> None:
    g.add_argument("--input-range", metavar="LO,HI",
                   help=".npy/.npz not in 0-255 pixels: the values meaning pixel 0 and 255, e.g. 0,1 or 0,65535")


def _resize_arg(g: "argparse._ArgumentGroup", recorded: bool = False) -> None:
    """``--resize``: how images of another size or aspect are fitted to the model's input
    (:class:`edgeship.types.Resize`); validate's default is the one the manifest records."""
    from edgeship.types import Resize

    default = "the manifest's, else stretch" if recorded else Resize.STRETCH.value
    g.add_argument("--resize", choices=[r.value for r in Resize], default=None,
                   help=f"fit other-sized images: stretch or center-crop; the figures assume it (default: {default})")


def _alias(g: Any, old: str, dest: str) -> None:
    """An option's former spelling, still accepted and kept out of ``--help`` (the new one is documented)."""
    g.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _out_arg(g: Any, default: str | None = DEFAULT_OUT, what: str = "output directory") -> None:
    g.add_argument("--out", default=default, metavar="DIR", help=f"{what} (default: {default})")


def _executor_args(p: argparse.ArgumentParser) -> None:
    from edgeship.validate.options import ExecutorName, default as option

    g = p.add_argument_group("executor")
    g.add_argument("--executor", default=option("executor"), choices=[e.value for e in ExecutorName],
                   help="local (default) or ray: the data set in shards over a Ray cluster")
    g.add_argument("--address", metavar="ADDR", help="with --executor ray: the cluster, e.g. HOST:6379 (default: a "
                                                     "local Ray)")
    g.add_argument("--workers", type=_count(1), metavar="N", help="with --executor ray: shard tasks in flight "
                                                                  "(default: CPUs / --threads)")
    g.add_argument("--skip-bad-images", action="store_const", const=True, default=None,
                   help="an unreadable image fails alone instead of stopping the run (default with ray)")
    g.add_argument("--in-process", dest="contain", action="store_false", default=option("contain"),
                   help="run every runtime in this process, to debug one (default: each in its own process)")


def _executor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"executor": args.executor, "address": args.address, "workers": args.workers,
            "skip_bad_images": args.skip_bad_images, "contain": args.contain}


REPORT_SUBDIR = "report"


def default_report_dir(artifact: str | Path) -> Path:
    """Where ``edgeship validate`` writes its reports without ``--out``: ``report/`` in the first artifact's
    directory (a directory holding a manifest, else the file's folder), as ``edgeship run`` writes ``OUT/report``."""
    from edgeship.manifest import MANIFEST_NAME

    path = Path(artifact)
    return (path if (path / MANIFEST_NAME).is_file() else path.parent) / REPORT_SUBDIR


def _validate_paths(args: argparse.Namespace) -> tuple[list[str], Path | None, str]:
    """The artifacts (positionals and ``--artifacts``), the report directory (None: ``--no-report``) and the option
    that names it (``--out``, or ``--report`` when that spelling was given). Raises :class:`UserError` for no
    artifacts, two report directories, or one with ``--no-report``."""
    paths = list(args.artifacts or []) + list(getattr(args, "artifacts_option", None) or [])
    if not paths:
        raise UserError("no artifacts given: edgeship validate DIR_OR_FILES... (an export's --out directory, or "
                        ".tflite/.onnx/.mlpackage files)")
    old = getattr(args, "report", None)
    if old and args.out and Path(old) != Path(args.out):
        raise UserError(f"--out {args.out} and --report {old} both name the report directory: give one (--out)")
    option, out = ("--report", old) if old else ("--out", args.out)
    if args.no_report:
        if out:
            raise UserError(f"{option} names the report directory and --no-report skips the report: give one of them")
        return paths, None, option
    return paths, Path(out) if out else default_report_dir(paths[0]), option


def _cmd_validate(args: argparse.Namespace) -> int:
    from edgeship.fileio import check_writable_dir
    from edgeship.types import Format
    from edgeship.validate.pipeline import validate
    from edgeship.validate.reports import summary_table

    paths, report_dir, option = _validate_paths(args)
    if report_dir is not None:  # before any work, naming the option that moves it
        check_writable_dir(report_dir, option=option)
    report = validate(paths, reference=args.reference, data=args.data, policy=args.policy, resize=args.resize,
                      report_dir=report_dir, require=Format.parse_list(args.require, "format") if args.require else (),
                      threads=args.threads, iterations=args.iterations, trust_model=args.trust_model,
                      kernel_path_samples=args.kernel_path_samples, allow_modified=args.allow_modified,
                      baseline=args.baseline, latency_from=args.latency_from, device=args.device,
                      input_range=args.input_range, output_kind=args.output_kind, expect_accuracy=args.expect_accuracy,
                      progress=not args.quiet, **_executor_kwargs(args))
    table = summary_table(report)
    *rows, verdict = table.splitlines()
    if not args.quiet:  # quiet: the verdict line alone
        print("\n".join(rows))
    if report_dir is not None:  # the verdict ends the output
        print(f"reports in {report_dir}: report.json report.md report.html junit.xml")
    print(verdict)
    if not args.quiet:
        _print_baseline(report)
    return report.exit_code


def _print_baseline(report) -> None:
    from edgeship.validate.baseline import baseline_summary

    line = baseline_summary(report)
    if line:
        print(line)


# ----------------------------------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline (export, quantise, validate, reports) from an edgeship.toml, or on the embedded demo."""
    from edgeship.pipeline import load_config, run

    config = run_config(args, load_config(args.config))
    lines: list[str] = []
    report = run(config, echo=lines.append if args.quiet else print)
    if args.quiet and lines:
        print(lines[-1])  # the verdict
    return report.exit_code


def run_config(args: argparse.Namespace, config: Any) -> Any:
    """``config`` (a :class:`edgeship.pipeline.RunConfig`, from an edgeship.toml or the defaults) with the flags
    given on the command line over it: a flag wins over the file's key; paths on the command line are relative to
    the working directory. Raises :class:`UserError` for a flag's bad value (``--mean 0.5`` without
    ``--force-preprocessing``...)."""
    from edgeship.models.spec import parse_triplet

    if args.out:
        config.out = Path(args.out)
    model = {"model": args.model, "labels": args.labels, "output_kind": args.output_kind,
             "input_size": args.input_size, "mean": parse_triplet(args.mean, "--mean") if args.mean else None,
             "std": parse_triplet(args.std, "--std") if args.std else None}
    for name, value in model.items():
        if value is not None:
            setattr(config, name, value)
    for flag in ("trust_model", "bgr", "bake_preprocessing", "force_preprocessing"):
        if getattr(args, flag):
            setattr(config, flag, True)
    if args.resize and args.resize != config.resize:
        config.resize = args.resize
    validate = {"data": args.data, "baseline": args.baseline, "latency_from": list(args.latency_from) or None,
                "device": args.device}
    config.validate = config.validate.model_copy(update={k: v for k, v in validate.items() if v})
    if args.calibration:
        config.quantize = config.quantize.model_copy(update={"calibration": args.calibration})
    return config


# ----------------------------------------------------------------------------------------------- init
def _cmd_init(args: argparse.Namespace) -> int:
    """A commented starter edgeship.toml for the model (:func:`edgeship.starter.write_starter`; safe loading)."""
    from edgeship.starter import write_starter

    write_starter(args.out, model=args.model, force=args.force, input_size=args.input_size)
    return 0


# ----------------------------------------------------------------------------------------------- sweep
def _cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of variants x precisions on Ray, one task per variant; the table and the plot."""
    from edgeship.progress import counted
    from edgeship.sweep import SweepConfig, failed_variants, sweep, text_table

    def floats(text: str, what: str) -> list[float]:
        try:
            return [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--{what} takes comma-separated numbers, got '{text}'") from None

    config = SweepConfig(
        families=[f.strip() for f in args.families.split(",") if f.strip()],
        alphas=floats(args.alphas, "alphas"), resolutions=[int(r) for r in floats(args.resolutions, "resolutions")],
        precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
        formats=[f.strip() for f in args.formats.split(",") if f.strip()], data=args.data,
        num_samples=args.num_samples, iterations=args.iterations, threads=args.threads, out=Path(args.out),
        address=args.address, workers=args.workers)
    rows = sweep(config, progress=not args.quiet, echo=(lambda _: None) if args.quiet else print)
    failed = failed_variants(rows)
    if not args.quiet:
        print(text_table(rows))
        for name in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == name]
            report = next((r["report"] for r in mine if r.get("report")), None)
            print(f"{name}: {'FAILED' if name in failed else 'passed'}, "
                  + (f"report {report}" if report else f"no report ({mine[0].get('reason', 'failed')})"))
        print(f"table and plot in {config.out}: sweep.md sweep.html sweep.json sweep.png")
    variants = len({r["variant"] for r in rows})
    print(f"{'FAILED' if failed else 'PASSED'}: " + (f"{len(failed)} of {counted(variants, 'variant')} failed"
                                                    if failed else f"{counted(variants, 'variant')} passed"))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeship",
        description="Ship trained MobileNets to phones: .tflite, .onnx and .mlpackage, checked against the float model.",
    )
    parser.add_argument("--version", action="version", version=f"edgeship {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _verbosity_parser()

    p = sub.add_parser("models", parents=[common], help="list MobileNet variants with parameters and multiply-adds",
                       description="List the MobileNet variants (or the given models) with parameters and "
                                   "multiply-adds, counted as the MobileNet papers count them.")
    p.add_argument("names", nargs="*", metavar="NAME|PATH", help="variants or model files (default: every variant)")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    p.add_argument("--layers", action="store_true", help="per-layer breakdown")
    p.add_argument("--trust-model", action="store_true", help="allow models with Lambda layers or custom code")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("export", parents=[common], help="export a model to TFLite, ONNX and Core ML (float)",
                       description="Export a trained model to float TFLite, ONNX and Core ML, with each "
                                   "ecosystem's metadata, and record them in DIR/manifest.json.")
    _model_args(p)
    _export_args(p.add_argument_group("export"))
    g = p.add_argument_group("model card")
    g.add_argument("--name", help="model name in the metadata (default: the model's)")
    g.add_argument("--description", help="short description")
    g.add_argument("--version", default="1.0", help="model version (default 1.0)")
    g.add_argument("--author", default="", help="author")
    g.add_argument("--license", default="", help="license")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("quantize", parents=[common],
                       help="int8 TFLite and ONNX, Core ML w8 and w8a8, from one calibration set",
                       description="Quantise a model for all formats from one calibration set: full-integer "
                                   "int8 TFLite (per-channel weights), an int8 ONNX with the TFLite's exact "
                                   "parameters, Core ML w8 (weights int8, per channel) and w8a8 (activations "
                                   "int8 too, calibrated through edgeship's ML Program executor). ReLU6 outputs "
                                   "get the fixed range [0, 6]. What each option measured: docs/cli.md.")
    _model_args(p)
    _quantize_args(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("validate", parents=[common], usage="%(prog)s [options] DIR_OR_FILES...",
                       help="run every artifact against the float model and gate the release",
                       description="Run each artifact in its own runtime on real inputs, compare it with the "
                                   "float reference, apply the release gates and write reports. Exit 0 when every "
                                   "gate passes, 1 when one fails, 2 for bad input, 3 for the environment (disk, "
                                   "permissions, a missing runtime). Images of another size or aspect than the "
                                   "model's input are fitted by --resize (the manifest's, else stretch): the figures "
                                   "hold for a client that fits them the same way.")
    p.add_argument("artifacts", nargs="*", metavar="DIR_OR_FILES",
                   help="artifact files (.tflite, .onnx, .mlpackage), or directories holding a manifest.json")
    p.add_argument("--artifacts", dest="artifacts_option", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--reference", metavar="PATH|NAME", help="the float model (default: the manifest's source, or "
                                                            "the demo model)")
    p.add_argument("--trust-model", action="store_true", help="allow a reference with Lambda layers or custom code")
    g = p.add_argument_group("report")
    g.add_argument("--out", metavar="DIR", help="where report.json/.md/.html and junit.xml go (default: "
                                                f"{REPORT_SUBDIR}/ in the first artifact's directory)")
    _alias(g, "--report", "report")  # the former spelling: errors name it when it was the one typed
    g.add_argument("--no-report", action="store_true", help="write no report files (the table and exit code only)")
    _validate_args(p)
    _executor_args(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("sweep", parents=[common],
                       help="a grid of variants x precisions on Ray: MACs, size, latency (and agreement)",
                       description="Run the pipeline of 'edgeship run' on every variant of a grid (family x "
                                   "alpha x resolution; random weights) and precision, one Ray task per variant, "
                                   "and write one table (Markdown, JSON, HTML) and a latency plot. Exits 1 when a "
                                   "variant fails. Needs 'pip install edgeship[ray]'.")
    p.add_argument("--families", default="mobilenet_v2", help="comma-separated families (default mobilenet_v2)")
    p.add_argument("--alphas", default="0.35,0.5", help="comma-separated width multipliers (default 0.35,0.5)")
    p.add_argument("--resolutions", default="96,128", help="comma-separated input sizes (default 96,128)")
    p.add_argument("--precisions", default="fp32,int8", help="comma-separated precisions (default fp32,int8)")
    _alias(p, "--precision", "precisions")
    p.add_argument("--formats", default="tflite", help="comma-separated formats (default tflite)")
    p.add_argument("--data", metavar="DATA", help="images or .npy/.npz for agreement and SQNR (default: 16 demo "
                                                  "images, latency only)")
    p.add_argument("--num-samples", type=_count(1), default=32, help="calibration samples (default 32)")
    p.add_argument("--iterations", type=_count(1), default=20, help="timed inferences per artifact (default 20)")
    p.add_argument("--threads", type=_count(1), default=1, help="threads per runtime, and CPUs per task (default 1)")
    _out_arg(p, "edgeship-sweep")
    p.add_argument("--address", metavar="ADDR", help="the Ray cluster to join (default: a local Ray for the sweep)")
    p.add_argument("--workers", type=_count(1), metavar="N", help="variants in flight (default: CPUs / --threads)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("run", parents=[common], help="the whole pipeline: export, quantise, validate, report",
                       description="Run the whole pipeline from an edgeship.toml, or from flags alone "
                                   "('edgeship run --model M --data D'); flags override the config's keys. Without "
                                   "either, on the embedded demo model and its held-out images. Exits like "
                                   "'validate'; the reports go to OUT/report.")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="an edgeship.toml (default: none, the flags' and "
                                                               "defaults' values)")
    _out_arg(p, None, f"output directory (default: the config's, or {DEFAULT_OUT})")
    _model_args(p)
    g = p.add_argument_group("data (override the config's)")
    g.add_argument("--data", metavar="DATA", help="validation images or .npy/.npz (default: the config's; required "
                                                  "but for the demo model)")
    g.add_argument("--calibration", metavar="DATA", help="calibration images or .npy/.npz (default: the config's; "
                                                         "required but for the demo model)")
    _release_args(p.add_argument_group("release over release, devices (override the config's [validate])"))
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("init", help="write a commented starter edgeship.toml for a model",
                       description="Write a starter edgeship.toml for 'edgeship run': every table and key, the "
                                   "model's settled values (output kind, preprocessing, labels) set, the rest "
                                   "commented out with one line each. The model is read in safe mode: nothing "
                                   "from the file runs.")
    p.add_argument("--model", metavar="NAME|PATH", help="a .keras / .h5 / SavedModel path or a variant name "
                                                        "(default: the embedded demo model)")
    p.add_argument("--out", default="edgeship.toml", metavar="FILE", help="the file to write (default edgeship.toml)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--input-size", metavar="HxW", type=_input_size,
                   help="fix a dynamic input size (a model taking (None, None, None, 3)), e.g. 224x224")
    p.set_defaults(func=_cmd_init)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    """The parser of ``command`` (a subcommand's name), None if there is none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is the contract of :mod:`edgeship.errors` (0 passed, 1 a gate failed, 2 bad
    input, 3 the environment, 4 a bug). Failures print one line; ``EDGESHIP_DEBUG=1`` re-raises them instead."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand's parser, which names its own --help
        sub = _subparser(parser, getattr(args, "command", None))
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    debug = os.environ.get("EDGESHIP_DEBUG", "") not in ("", "0")
    from edgeship.fileio import TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt(), _verbosity(args):
            return func(args)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM raised as Terminated (fileio)
        if isinstance(e, Terminated) or TERMINATED["received"]:
            print("edgeship: terminated (SIGTERM); no partial file was left", file=sys.stderr)
            return 143
        print("edgeship: interrupted; no partial file was left", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            _show_captured(e)
            raise
        error = _as_user_error(e)
        if error is None:  # a bug in edgeship
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            print(f"edgeship: internal error: {type(e).__name__}{': ' + first if first else ''} (a bug in edgeship; "
                  "EDGESHIP_DEBUG=1 shows the traceback)", file=sys.stderr)
            return INTERNAL_ERROR
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"edgeship: error: {message}", file=sys.stderr)
        return error.exit_code


def _verbosity_parser() -> _Parser:
    """``-q``/``-v``, which every subcommand takes (argparse parents)."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("output").add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress and no notes: only the verdict (validate, run, sweep) and errors")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="progress as a line per step, and what TensorFlow and the converters print")
    return common


#: What -q and -v set for the command's duration (edgeship.progress, edgeship._tf); restored after it
_VERBOSITY_ENV = {"quiet": {"EDGESHIP_PROGRESS": "off"},
                  "verbose": {"EDGESHIP_PROGRESS": "lines", "EDGESHIP_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}}


@contextlib.contextmanager
def _verbosity(args: argparse.Namespace) -> Iterator[None]:
    """-q: progress off, and export/quantize print nothing on success (stdout dropped); -v: progress lines even
    in a terminal, and TensorFlow's warnings and the converters' output shown (``EDGESHIP_VERBOSE``). Neither:
    nothing changes (TensorFlow stays quiet). The environment is restored afterwards."""
    level = "quiet" if getattr(args, "quiet", False) else "verbose" if getattr(args, "verbose", False) else None
    if level is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in _VERBOSITY_ENV[level]}
    os.environ.update(_VERBOSITY_ENV[level])
    try:
        if level == "quiet" and args.command in ("export", "quantize"):  # no verdict to print: success is silent
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _as_user_error(e: BaseException) -> UserError | None:
    """The one-line error ``e`` stands for at the CLI boundary, or None for a bug. OSError (disk full, permission
    denied...) and a missing module (a runtime or converter not installed) are the environment's (exit 3)."""
    if isinstance(e, UserError):
        return e
    if isinstance(e, MemoryError):
        return EnvironmentProblem("out of memory: use a smaller model or data set, or a machine with more memory")
    if isinstance(e, ModuleNotFoundError):
        return EnvironmentProblem(f"a library edgeship needs is not installed ({e.name or e}): install edgeship's "
                                  "dependencies (pip install edgeship, or make setup)")
    if isinstance(e, OSError):
        return from_os_error(e)
    for inner in (e.__cause__, e.__context__):  # a library's wrapper around a full disk or a permission error
        if isinstance(inner, OSError) and inner.errno is not None:
            return from_os_error(inner)
    return None


def _show_captured(e: BaseException) -> None:
    """What the converters printed while failing (kept quiet otherwise): shown with the traceback."""
    for exc in (e, e.__cause__, e.__context__):
        if exc is not None and getattr(exc, "captured_output", None):
            sys.stderr.write(getattr(exc, "captured_output"))
            break


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
