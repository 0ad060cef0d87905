"""``edgeship run``: the whole pipeline — export, quantise, validate and report — from one
``edgeship.toml`` (or from the command line's flags, which override the file's keys).

The file's tables are ``[model]`` (:class:`edgeship.models.prepare.ModelOptions`), ``[export]``
(:class:`edgeship.export.options.ExportOptions`), ``[quantize]`` (:class:`edgeship.quantize.options.QuantizeOptions`),
``[validate]`` (:class:`edgeship.validate.options.ValidateOptions`) and ``[output]`` (:class:`RunConfig`); every key
is optional and relative paths are relative to the file. ``edgeship init [--model PATH]`` writes a commented
starter for a model with every table and key, one line each (:mod:`edgeship.starter`; tests/test_starter.py loads
it, and each key uncommented, as a :class:`RunConfig`), so there is one description of the keys to keep true, not
an example here that could drift from it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from edgeship.errors import UserError
from edgeship.export.options import ExportOptions
from edgeship.fileio import read_structured
from edgeship.models.prepare import ModelOptions
from edgeship.models.registry import looks_like_variant_name
from edgeship.quantize.options import QuantizeOptions
from edgeship.schema import Fraction, NonNegativeInt, PositiveInt, Table, check
from edgeship.types import Format
from edgeship.validate.options import ValidateOptions
from edgeship.validate.results import Report

if TYPE_CHECKING:  # built from the enum at run time, which a type checker cannot follow
    FormatName = str
else:
    FormatName = Literal[tuple(f.value for f in Format)]


# The schema of edgeship.toml: one class per table (edgeship.schema.Table: strict types, unknown keys refused). To
# add a key, add a field here (and to RunConfig / load_config). [export] is the export stage's own options object
# (edgeship.export.options.ExportOptions): a key added there is a TOML key, a CLI argument and an export() keyword.
class ModelTable(Table):
    path: str | None = None
    labels: str | None = None
    trust: bool = False
    mean: float | list[float] | None = None  # 0-255 pixel units: one number or three (None: the model's own)
    std: float | list[float] | None = None
    bgr: bool = False
    bake_preprocessing: bool = False
    force_preprocessing: bool = False  # accept a mean/std outside every image-model convention (0-1 units, ...)
    output_kind: str | None = None  # edgeship.types.OutputKind.parse: probabilities, logits, multilabel, embedding, regression
    input_size: str | list[int] | None = None  # "HxW" or [H, W]: fixes a dynamic input size (edgeship.models.setups)
    resize: str = "stretch"  # or "center-crop": how other-sized images are fitted (edgeship.types.Resize)


class QuantizeTable(QuantizeOptions):
    """The stage's options (:class:`edgeship.quantize.options.QuantizeOptions`) and which formats to quantise."""

    formats: list[FormatName] | None = None
    calibration: str | None = None  # a path in the file (relative to it), not a Path object


class OutputTable(Table):
    dir: str | None = None


with warnings.catch_warnings():  # the table named "validate" shadows pydantic's deprecated BaseModel.validate
    warnings.simplefilter("ignore", UserWarning)

    class ConfigFile(Table):
        """An ``edgeship.toml``: every table optional."""

        model: ModelTable = ModelTable()
        export: ExportOptions = ExportOptions()
        quantize: QuantizeTable = QuantizeTable()
        validate: ValidateOptions = ValidateOptions()  # type: ignore[assignment]
        output: OutputTable = OutputTable()


@dataclass
class RunConfig:
    model: str | None = None
    labels: str | None = None
    trust_model: bool = False
    output_kind: str | None = None  # probabilities | logits | multilabel | embedding | regression (None: detected)
    mean: tuple[float, float, float] | None = None  # None: the model's own
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    bake_preprocessing: bool = False
    force_preprocessing: bool = False  # accept a mean/std outside every convention (edgeship.models.spec)
    input_size: tuple[int, int] | None = None  # (H, W) fixing a dynamic input size
    resize: str = "stretch"  # how images of another size or aspect are fitted (edgeship.types.Resize)
    export: ExportOptions = field(default_factory=ExportOptions)
    quantize: QuantizeTable = field(default_factory=lambda: QuantizeTable())  # [quantize]: formats + QuantizeOptions
    validate: ValidateOptions = field(default_factory=ValidateOptions)  # [validate], paths made relative
    out: Path = Path("edgeship-out")

    def model_options(self) -> ModelOptions:
        """The [model] table as the model stage's options (:class:`edgeship.models.prepare.ModelOptions`)."""
        return ModelOptions(model=self.model, labels=self.labels, trust_model=self.trust_model, mean=self.mean,
                            std=self.std, bgr=self.bgr, force_preprocessing=self.force_preprocessing,
                            output_kind=self.output_kind, bake_preprocessing=self.bake_preprocessing,
                            input_size=self.input_size, resize=self.resize)

    def __getattr__(self, name: str) -> Any:
        """The stage options read as before (``config.baseline``, ``config.ptq``, ``config.quantize_formats``); set
        them through ``validate`` and ``quantize``."""
        if name in _QUANTIZE_ALIASES:
            value = getattr(self.quantize, _QUANTIZE_ALIASES[name])
            return _range(value) if name == "calibration_input_range" else value
        if name not in ("validate", "quantize") and name in ValidateOptions.model_fields:
            return getattr(self.validate, name)
        if name not in ("validate", "quantize") and name in QuantizeTable.model_fields:
            return getattr(self.quantize, name)
        raise AttributeError(f"'RunConfig' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        for table, fields in (("validate", ValidateOptions.model_fields),
                              ("quantize", {**QuantizeTable.model_fields, **dict.fromkeys(_QUANTIZE_ALIASES)})):
            if name in fields:  # would be shadowed, never used: say where it goes
                raise AttributeError(f"RunConfig.{name} is a {table} option: config.{table} = "
                                     f"config.{table}.model_copy(update={{'{name}': ...}})")
        super().__setattr__(name, value)


#: RunConfig's former names of three [quantize] keys
_QUANTIZE_ALIASES = {"quantize_formats": "formats", "quantize_precisions": "precisions",
                     "calibration_input_range": "input_range"}


def _range(value: Any) -> tuple[float, float] | None:
    from edgeship.data import parse_input_range

    return parse_input_range(value)


def load_config(path: str | Path | None) -> RunConfig:
    """``path`` (an edgeship.toml) as a :class:`RunConfig`; None: the defaults (the demo). A wrong type, an unknown
    table or key, or a value outside its meaning is one :class:`UserError` line naming the file and key."""
    if path is None:
        return RunConfig()
    p = Path(path)
    data = read_structured(p, "config")
    unknown = sorted(set(data) - set(ConfigFile.model_fields))
    if unknown:
        raise UserError(f"{p}: unknown table [{unknown[0]}]; use {', '.join(f'[{t}]' for t in ConfigFile.model_fields)}")
    c = check(ConfigFile, data, p)
    base = p.parent
    if not c.model.force_preprocessing:  # the units, before any work (edgeship.models.spec.check_declared_units)
        from edgeship.models.spec import check_declared_units

        check_declared_units(_triplet(c.model.mean, f"{p}: [model] mean"), _triplet(c.model.std, f"{p}: [model] std"),
                             f"{p}: [model] mean/std")

    def rel(value: str | None) -> str | None:
        """Paths are relative to the config file; a variant name stays a name."""
        if value is None:
            return None
        if Path(value).is_absolute() or (looks_like_variant_name(value) and not (base / value).exists()):
            return value
        return str(base / value)

    from edgeship.data import parse_input_range
    from edgeship.models.setups import parse_input_size
    from edgeship.types import OutputKind, Resize

    m, e, q, v, o = c.model, c.export, c.quantize, c.validate, c.output
    return RunConfig(
        model=rel(m.path), labels=rel(m.labels), trust_model=m.trust,
        output_kind=None if m.output_kind is None else str(OutputKind.parse(m.output_kind, f"{p}: [model] output_kind")),
        export=e, quantize=q.model_copy(update=dict(
            calibration=rel(q.calibration),
            input_range=parse_input_range(q.input_range, f"{p}: [quantize] input_range"))),
        validate=v.model_copy(update=dict(
            data=rel(v.data), policy=rel(v.policy), baseline=rel(v.baseline), latency_from=[str(rel(x)) for x in v.logs],
            input_range=parse_input_range(v.input_range, f"{p}: [validate] input_range"))),
        mean=_triplet(m.mean, f"{p}: [model] mean"), std=_triplet(m.std, f"{p}: [model] std"),
        bgr=m.bgr, bake_preprocessing=m.bake_preprocessing, force_preprocessing=m.force_preprocessing,
        input_size=parse_input_size(m.input_size, f"{p}: [model] input_size"),
        resize=str(Resize.parse(m.resize, f"{p}: [model] resize")),
        out=Path(rel(o.dir) or "edgeship-out"),
    )


def _preflight(config: RunConfig, quantize_formats: list[Any], loaded: Any = None) -> None:
    """Everything of ``config`` that can be checked without running a model (issue 23, item 4), so a mistake fails
    in seconds, not after the export: the [validate] files (:func:`edgeship.validate.pipeline.preflight`), the
    quantise plan and the calibration set; with the ``loaded`` model, the data sets against its labels and size (and
    no data given refused unless the model is the demo, :func:`edgeship.models.loading.demo_default`)."""
    from edgeship.data import check_data
    from edgeship.models.loading import demo_default, source_takes_demo_data
    from edgeship.quantize.calibration import DEMO_CALIBRATION, open_calibration
    from edgeship.validate.pipeline import preflight

    demo_data = loaded is not None or source_takes_demo_data(config.model)  # before loading: from --model alone
    preflight(config.validate, loaded, demo_data=demo_data)
    if not quantize_formats:
        return
    from edgeship.quantize import check_plan

    table = config.quantize
    check_plan(QuantizeOptions.parse(**{k: getattr(table, k) for k in QuantizeOptions.model_fields}).effective(),
               quantize_formats)
    if loaded is None:
        check_data(table.calibration, DEMO_CALIBRATION if demo_data else None,
                   _range(table.input_range), use_labels=False, option="--calibration")
    else:
        open_calibration(table.calibration, loaded.spec, table.num_samples, _range(table.input_range),
                         default=demo_default(loaded, DEMO_CALIBRATION))


def _settle_on(config: RunConfig) -> Callable[[Any], Any] | None:
    """The user's own validation images (else calibration images), on which an assumed preprocessing is settled before export
    (:func:`edgeship.models.prepare.settle_preprocessing`); None without them (the demo's digits say nothing of
    another model's feed)."""
    v, q = config.validate, config.quantize
    data, input_range = (v.data, v.input_range) if v.data is not None else (q.calibration, q.input_range)
    if data is None:
        return None
    from edgeship.data import open_data

    return lambda loaded: open_data(data, loaded.spec.input_shape[:2], loaded.spec.labels, input_range=input_range,
                                    resize=config.resize)


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
    from edgeship.export import export_with
    from edgeship.models.prepare import prepare_model
    from edgeship.validate.pipeline import validate_with
    from edgeship.validate.reports import summary_table

    from edgeship.fileio import check_writable_dir
    from edgeship.progress import counted

    start = time.perf_counter()
    model_options = config.model_options()
    model_options.check("[model] mean/std")  # the declared units and the label file, before any work
    quantize_formats = list(config.export.formats if config.quantize.formats is None else config.quantize.formats)
    _preflight(config, quantize_formats)  # files, layouts and option combinations before the model loads
    check_writable_dir(config.out / "report", option="--out")  # exit 3 now, not at the end; nothing made yet
    loaded = prepare_model(model_options, what="[model] mean/std/bgr", echo=echo, settle_on=_settle_on(config))
    _preflight(config, quantize_formats, loaded)  # and against the model's labels and size, before export
    spec = loaded.spec
    echo(f"edgeship run: {spec.name} ({loaded.source_path}; {spec.input_shape[0]}x{spec.input_shape[1]}, "
         f"{spec.num_classes} classes) -> {config.out}")
    from edgeship.models.loading import describe_input

    echo(describe_input(loaded))
    t0 = time.perf_counter()
    result = export_with(config.export, loaded=loaded, out=config.out)
    echo(f"exported {counted(len(result.paths), 'artifact')} in {time.perf_counter() - t0:.1f} s")
    if quantize_formats:
        from edgeship.quantize import QuantizeOptions, quantize_with

        t0 = time.perf_counter()
        options = QuantizeOptions.parse(**{k: getattr(config.quantize, k) for k in QuantizeOptions.model_fields})
        q = quantize_with(options, quantize_formats, config.out, lambda: loaded)
        echo(f"quantised {counted(len(q.paths), 'artifact')} in {time.perf_counter() - t0:.1f} s")
        for name, why in q.skipped.items():
            echo(f"{name}: skipped, {why}")
    t0 = time.perf_counter()
    report_dir = config.out / "report"
    report = validate_with([config.out], config.validate, reference=loaded, report_dir=report_dir)
    echo(f"validated on {report.data['count']} images in {time.perf_counter() - t0:.1f} s")
    echo(summary_table(report))
    if report.baseline is not None:
        from edgeship.validate.baseline import baseline_summary

        echo(baseline_summary(report) or "")
    echo(f"reports: {report_dir}/report.md  report.html  report.json  junit.xml")
    echo(f"{'PASSED' if report.passed else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return report
