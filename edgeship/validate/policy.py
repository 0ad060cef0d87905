"""Release gates as data: a TOML policy (shipped defaults in ``policy.toml`` beside this module; users override
any of it with ``--policy FILE``), evaluated against an artifact's metrics and latency."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, create_model

from edgeship.errors import UserError
from edgeship.numerics import DEFAULT_CONFIDENCE, decide_rate
from edgeship.fileio import read_structured
from edgeship.schema import Fraction, NonNegative, NonNegativeInt, Positive, Table, check
from edgeship.types import Format, OutputKind, Precision
from edgeship.validate.metrics import CONFIDENT_MARGIN, LABEL_THRESHOLD, MARGIN_BINS, REGISTRY, Metric, Unit

#: Output kinds with their own gate tables ([multilabel.PRECISION], [embedding.PRECISION], [regression.PRECISION],
#: [segmentation.PRECISION]);
#: probabilities and logits are gated by the precision tables.
_KIND_TABLES = tuple(k.value for k in OutputKind if k.own_tables)
#: The tables of a quantisation-aware trained model's float files ([qat.PRECISION], edgeship.models.qat): they
#: replace the precision's table for its class outputs.
QAT_TABLE = "qat"
from edgeship.validate.results import GateResult, Latency, Metrics

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
_LATENCY_KEYS = {"p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99", "mean_ms": "mean"}
# [device_latency.FORMAT.PRECISION] budgets -> the DeviceLatency field they bound (figures from benchmark_model)
DEVICE_LATENCY_KEYS = {"p50_ms": "p50_ms", "p95_ms": "p95_ms", "mean_ms": "mean_ms", "max_ms": "max_ms",
                       "first_ms": "first_ms", "init_ms": "init_ms"}
# [baseline] budgets (see policy.toml): a drop of a figure, in its units, or a relative growth
BASELINE_BUDGETS = {"accuracy_top1_drop", "top1_agreement_drop", "sqnr_db_drop", "size_growth",
                    "latency_p50_growth"}


@dataclass
class Policy:
    metric_limits: dict[str, dict[str, float]] = field(default_factory=dict)  # "fp32" or "tflite.fp32" -> limits
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # "tflite.int8" -> budgets
    source: str = str(DEFAULT_POLICY)
    # [confidence]: edges of the reference top-1 margin bins flips are counted in, and the margin from which an
    # answer counts as confident (the confident_flips metric)
    margin_bins: tuple[float, ...] = MARGIN_BINS
    confident_margin: float = CONFIDENT_MARGIN
    # [baseline]: the budgets of a comparison with a previous report (edgeship.validate.baseline), and whether an
    # artifact the baseline had and this run lacks fails the release
    baseline: dict[str, float] = field(default_factory=dict)
    fail_on_missing: bool = False
    device_latency: dict[str, dict[str, float]] = field(default_factory=dict)  # "tflite.int8" -> budgets
    # [contract]: limits of the preprocessing contract check (edgeship.validate.contract)
    contract: dict[str, float] = field(default_factory=dict)
    # [statistics]: the one-sided confidence of the Wilson bounds a gate on a share of samples is decided with, and
    # what an observed pass the sample cannot decide is: "warn" (passes, flagged) or "fail"
    confidence: float = DEFAULT_CONFIDENCE
    undecided: str = "warn"
    # [limits]: each call into an artifact's runtime (opening it, one batch, its latency run) must answer within
    # call_seconds; memory_mb caps the address space of the process an artifact runs in (0: no cap)
    # (edgeship.validate.contained)
    call_seconds: float = 300.0
    memory_mb: int = 0

    def describe(self) -> dict[str, Any]:
        """What a report records of the policy: {"path", "sha256"}; the user's file (merged over the shipped one),
        or the shipped file alone with ``"shipped": True``."""
        from edgeship.fileio import sha256_path

        shipped = Path(self.source) == DEFAULT_POLICY
        return {"path": "edgeship/validate/policy.toml (shipped)" if shipped else self.source,
                "sha256": sha256_path(Path(self.source)), **({"shipped": True} if shipped else {})}

    def gate_device_latency(self, key: str, entries: list[Any]) -> list[GateResult]:
        """``[device_latency.FORMAT.PRECISION]`` budgets against each device's figures (a figure the log does not
        give, such as the median of an old benchmark_model build, is not gated)."""
        gates = []
        for entry in entries:
            for name, budget in self.device_latency.get(key, {}).items():
                value = getattr(entry, DEVICE_LATENCY_KEYS[name])
                if value is not None:
                    gates.append(GateResult(f"device_{name} on {entry.label}", float(value), float(budget), "<=",
                                            float(value) <= float(budget)))
        return gates
    # [multilabel] threshold: a multi-label score at or above it is a "yes" (the label_agreement metric)
    label_threshold: float = LABEL_THRESHOLD

    def limits_for(self, fmt: str, precision: str, kind: str | OutputKind | None = None,
                   qat: bool = False) -> dict[Metric, float]:
        """The gates of one artifact: its precision's table (or, for a multi-label, embedding, regression or
        segmentation output, its kind's ``[KIND.PRECISION]`` table instead; for a quantisation-aware trained model's
        file, ``[qat.PRECISION]`` when the policy has one), then its ``[FORMAT.PRECISION]`` overrides."""
        kind = str(kind) if kind is not None else None
        base = (self.metric_limits.get(f"{kind}.{precision}", {}) if kind in _KIND_TABLES
                else self.metric_limits.get(f"{QAT_TABLE}.{precision}", self.metric_limits.get(precision, {}))
                if qat else self.metric_limits.get(precision, {}))
        merged = {**base, **self.metric_limits.get(f"{fmt}.{precision}", {})}
        return {Metric(k): float(v) for k, v in merged.items()}

    def gate_metrics(self, fmt: str, precision: str, metrics: Metrics, kind: str | OutputKind | None = None,
                     counts: dict[str, tuple[int, int]] | None = None, qat: bool = False) -> list[GateResult]:
        """The metric gates of one artifact. ``counts``: (successes, samples) of the metrics that are shares of
        independent samples (:meth:`Comparison.counts`); their gates carry them and are decided at the policy's
        ``[statistics]`` (:meth:`_with_counts`)."""
        gates = []
        for metric, limit in self.limits_for(fmt, precision, kind, qat).items():
            value = getattr(metrics, metric.value)
            if value is None:
                # Not measurable on this data (accuracy without labels, no confident sample, kernel paths off), or
                # a [FORMAT.PRECISION] gate of another output kind; a gate that can never be measured for its
                # table is refused when the policy is read (_refuse_unmeasurable)
                continue
            higher = REGISTRY[metric].higher_is_better
            slack = FRACTION_SLACK if metric in FRACTION_METRICS else 0.0
            passed = value >= limit - slack if higher else value <= limit + slack
            gate = GateResult(metric.value, float(value), limit, ">=" if higher else "<=", bool(passed))
            pair = (counts or {}).get(metric.value)
            gates.append(self._with_counts(gate, pair, higher) if pair is not None else gate)
        return gates

    def _with_counts(self, gate: GateResult, pair: tuple[int, int], higher: bool) -> GateResult:
        """``gate`` with its counts and Wilson bounds. The observed verdict stays: a small sample never turns a miss
        into a pass (a false pass is the worst failure a release gate has); an observed pass that the bounds do
        not support fails only under ``undecided = "fail"``."""
        successes, samples = pair
        d = decide_rate(successes, samples, gate.limit, higher, self.confidence)
        # the observed verdict is the gate's own (counts at the limit pass within FRACTION_SLACK); where float
        # rounding puts decide_rate on the other side of the limit, the rate is at the limit: not decided
        decided = d.decided and d.passed == gate.passed
        needed = d.needed if d.passed == gate.passed else None
        passed = gate.passed and (decided or self.undecided != "fail")
        return replace(gate, passed=passed, successes=successes, samples=samples, confidence=self.confidence,
                       lower=d.lower, upper=d.upper, decided=decided, needed=None if decided else needed)

    def gate_latency(self, key: str, latency: Latency, p50_of: dict[str, float]) -> list[GateResult]:
        gates = []
        for name, budget in self.latency.get(key, {}).items():
            if name in _LATENCY_KEYS:
                value = getattr(latency, _LATENCY_KEYS[name])
                if value is not None:
                    gates.append(GateResult(f"latency_{name}", value, float(budget), "<=", value <= float(budget)))
            elif name == "p50_ratio":
                # A ratio to an artifact that was not measured in this run cannot be met: it fails (value n/a)
                # rather than vanish from the report.
                other = p50_of.get(str(budget["to"]))
                ratio = latency.p50 / other if latency.p50 is not None and other else None
                gates.append(GateResult(f"latency_p50_ratio_to_{budget['to']}", ratio, float(budget["max"]), "<=",
                                        ratio is not None and ratio <= float(budget["max"])))
        return gates


def load_policy(path: str | Path | None = None) -> Policy:
    """The shipped defaults, with the user's file (if any) merged over them table by table, key by key. A value of
    the wrong type, an unknown table/metric/budget, or a limit outside its metric's meaning (an agreement of 99 or
    -1, a negative drop, a latency ratio to an artifact kind that does not exist) is one :class:`UserError` line."""
    policy, _ = _parse(DEFAULT_POLICY)
    if path is None:
        return policy
    user, parsed = _parse(Path(path))  # parsed: what the user's file itself states (a key left out: None)
    for key, limits in user.metric_limits.items():
        policy.metric_limits[key] = {**policy.metric_limits.get(key, {}), **limits}
    for key, budgets in user.latency.items():
        policy.latency[key] = {**policy.latency.get(key, {}), **budgets}
    for key, budgets in user.device_latency.items():
        policy.device_latency[key] = {**policy.device_latency.get(key, {}), **budgets}
    policy.baseline = {**policy.baseline, **user.baseline}  # key by key: a key left out keeps the shipped value
    if parsed.baseline is not None and parsed.baseline.fail_on_missing is not None:
        policy.fail_on_missing = parsed.baseline.fail_on_missing
    if parsed.multilabel is not None and parsed.multilabel.threshold is not None:
        policy.label_threshold = parsed.multilabel.threshold
    confidence = parsed.confidence
    if confidence is not None:
        if confidence.margin_bins is not None:
            policy.margin_bins = tuple(confidence.margin_bins)
        if confidence.confident_margin is not None:
            policy.confident_margin = confidence.confident_margin
    policy.contract = {**policy.contract, **user.contract}
    statistics = parsed.statistics
    if statistics is not None:
        if statistics.confidence is not None:
            policy.confidence = statistics.confidence
        if statistics.undecided is not None:
            policy.undecided = statistics.undecided
    _apply_limits(policy, parsed.limits)
    policy.source = str(path)
    return policy


# ---- the policy file's schema (edgeship.schema.Table: strict types, unknown keys refused) -------------------------
#: Metrics that are shares in [0, 1] (agreement, accuracy, drop, share of values or of flips): their limits must be
#: too, and their gates compare counts over n, so a count exactly at the limit passes whatever its float rounding.
FRACTION_METRICS = frozenset(m for m, spec in REGISTRY.items() if spec.unit is Unit.FRACTION)
_LIMIT_TYPES: dict[Unit, Any] = {Unit.FRACTION: Fraction, Unit.OUTPUT: NonNegative, Unit.DB: float,
                                 Unit.COSINE: Annotated[float, Field(ge=-1, le=1)]}
#: A gate on a fraction passes within this of its limit: counts over n samples differ by at least 1/n >> 1e-9, so
#: the slack absorbs float rounding (280/300 - 277/300 = 0.010000000000000009 meets "<= 0.01") and nothing else.
FRACTION_SLACK = 1e-9


def _limit_type(metric: Metric) -> Any:
    return _LIMIT_TYPES[REGISTRY[metric].unit]


MetricLimits = create_model("MetricLimits", __base__=Table,
                            **{m.value: (_limit_type(m) | None, None) for m in Metric})  # type: ignore[call-overload]


def _keyed(name: str, value: Any, keys: Any) -> Any:
    """A schema table whose optional keys are ``keys`` (strings, or enums by value), each holding ``value``."""
    return create_model(name, __base__=Table,  # type: ignore[call-overload]
                        **{getattr(k, "value", k): (value | None, None) for k in keys})


FormatLimits = _keyed("FormatLimits", MetricLimits, Precision)
if TYPE_CHECKING:  # the values are built from the enums at run time, which a type checker cannot follow
    ArtifactKind = str
else:
    ArtifactKind = Literal[tuple(f"{f.value}.{p.value}" for f in Format for p in Precision)]


class Ratio(Table):
    to: ArtifactKind
    max: Positive


class Budgets(Table):
    p50_ms: Positive | None = None
    p90_ms: Positive | None = None
    p99_ms: Positive | None = None
    mean_ms: Positive | None = None
    p50_ratio: Ratio | None = None


LatencyTable = _keyed("LatencyTable", _keyed("LatencyPerFormat", Budgets, Precision), Format)


def _increasing_margins(bins: list[float]) -> list[float]:
    if any(not 0 < b < 1 for b in bins) or list(bins) != sorted(set(bins)):
        raise ValueError(f"must be increasing numbers strictly between 0 and 1, got {bins}")
    return bins


class Confidence(Table):
    """``[confidence]``: ``margin_bins`` (increasing edges strictly inside (0, 1)) and ``confident_margin`` (in
    (0, 1]); a key left out keeps the shipped value."""

    margin_bins: Annotated[list[float], AfterValidator(_increasing_margins)] | None = None
    confident_margin: Annotated[float, Field(gt=0, le=1)] | None = None


class Statistics(Table):
    """``[statistics]``: ``confidence`` (one-sided, strictly between 0.5 and 1) of the Wilson bounds that decide a
    gate on a share of samples, and ``undecided`` ("warn" or "fail"): what an observed pass the sample cannot
    decide is. A key left out keeps the shipped value."""

    confidence: Annotated[float, Field(gt=0.5, lt=1)] | None = None
    undecided: Literal["warn", "fail"] | None = None


class Limits(Table):
    """``[limits]``: ``call_seconds`` (> 0), the longest any call into an artifact's runtime may take before the
    artifact fails, and ``memory_mb`` (>= 0; 0: none), its process's address-space cap. A key left out keeps the
    shipped value."""

    call_seconds: Positive | None = None
    memory_mb: NonNegativeInt | None = None


class BaselineBudgets(Table):
    """``[baseline]``: budgets of a comparison with a previous report (:mod:`edgeship.validate.baseline`); a budget
    left out is not checked. Drops in the figure's units (fractions for shares, dB for SQNR), growths relative."""

    accuracy_top1_drop: Fraction | None = None
    top1_agreement_drop: Fraction | None = None
    sqnr_db_drop: NonNegative | None = None
    size_growth: NonNegative | None = None
    latency_p50_growth: NonNegative | None = None
    fail_on_missing: bool | None = None


DeviceLatencyTable = _keyed("DeviceLatencyTable", _keyed(
    "DevicePerFormat", _keyed("DeviceBudgets", Positive, DEVICE_LATENCY_KEYS), Precision), Format)


class ContractLimits(Table):
    """``[contract]``: limits of the preprocessing contract check (:mod:`edgeship.validate.contract`)."""

    min_samples: NonNegative | None = None
    max_top1_share: Fraction | None = None
    min_mean_margin: Fraction | None = None


EmbeddingTable = _keyed("EmbeddingTable", MetricLimits, Precision)
MultilabelTable = create_model("MultilabelTable", __base__=EmbeddingTable,
                               threshold=(Annotated[float, Field(gt=0, lt=1)] | None, None))


PolicyFile = create_model(
    "PolicyFile", __base__=Table, confidence=(Confidence | None, None), latency=(LatencyTable | None, None),
    baseline=(BaselineBudgets | None, None), device_latency=(DeviceLatencyTable | None, None),
    multilabel=(MultilabelTable | None, None), embedding=(EmbeddingTable | None, None),
    regression=(EmbeddingTable | None, None), segmentation=(EmbeddingTable | None, None),
    qat=(EmbeddingTable | None, None), contract=(ContractLimits | None, None), statistics=(Statistics | None, None),
    limits=(Limits | None, None),
    **{p.value: (MetricLimits | None, None) for p in Precision},
    **{f.value: (FormatLimits | None, None) for f in Format})  # type: ignore[call-overload]


def _check_file(path: Path) -> Any:
    data = read_structured(path, "policy")
    unknown = sorted(set(data) - set(PolicyFile.model_fields))
    if unknown:
        raise UserError(f"{path}: unknown table [{unknown[0]}]: use a precision "
                        f"({', '.join(p.value for p in Precision)}), a format.precision, confidence, latency, "
                        "device_latency, baseline, contract, statistics, limits, multilabel(.precision), "
                        "embedding.precision, regression.precision, segmentation.precision or qat.precision")
    return data, check(PolicyFile, data, path)


def _in_file_order(table: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """A validated table as a dict, its keys in the file's order (gates are listed as the policy lists them)."""
    dumped = table.model_dump(exclude_none=True)
    return {k: dumped[k] for k in raw if k in dumped}


def _per_artifact(table: Any) -> Any:
    """("format.precision", entry) for each entry of a [FORMAT.PRECISION]-keyed table (None: none)."""
    for f in Format:
        per = getattr(table, f.value) if table is not None else None
        for p in Precision:
            entry = getattr(per, p.value) if per is not None else None
            if entry is not None:
                yield f"{f.value}.{p.value}", entry


def _apply_limits(policy: Policy, limits: Any) -> None:
    if limits is not None:
        if limits.call_seconds is not None:
            policy.call_seconds = float(limits.call_seconds)
        if limits.memory_mb is not None:
            policy.memory_mb = int(limits.memory_mb)


def _parse(path: Path) -> tuple[Policy, Any]:
    """The policy file at ``path`` alone, and its validated schema object (what the file itself states)."""
    data, parsed = _check_file(path)
    policy = Policy(source=str(path))
    for p in Precision:
        limits = getattr(parsed, p.value)
        if limits is not None:
            policy.metric_limits[p.value] = _in_file_order(limits, data[p.value])
    for key, limits in _per_artifact(parsed):
        fmt, prec = key.split(".")
        policy.metric_limits[key] = _in_file_order(limits, data[fmt][prec])
    for key, budgets in _per_artifact(parsed.latency):
        policy.latency[key] = budgets.model_dump(exclude_none=True)
    for kind in (*_KIND_TABLES, QAT_TABLE):
        table = getattr(parsed, kind)
        for p in Precision:
            limits = getattr(table, p.value) if table is not None else None
            if limits is not None:
                policy.metric_limits[f"{kind}.{p.value}"] = _in_file_order(limits, data[kind][p.value])
        if kind == OutputKind.MULTILABEL.value and table is not None and table.threshold is not None:
            policy.label_threshold = table.threshold
    for key, budgets in _per_artifact(parsed.device_latency):
        policy.device_latency[key] = budgets.model_dump(exclude_none=True)
    if parsed.contract is not None:
        policy.contract = {k: float(v) for k, v in parsed.contract.model_dump(exclude_none=True).items()}
    if parsed.baseline is not None:
        dumped = parsed.baseline.model_dump(exclude_none=True)
        fail_on_missing = dumped.pop("fail_on_missing", None)
        if fail_on_missing is not None:
            policy.fail_on_missing = fail_on_missing
        policy.baseline = {k: float(v) for k, v in dumped.items()}
    if parsed.statistics is not None:
        if parsed.statistics.confidence is not None:
            policy.confidence = parsed.statistics.confidence
        if parsed.statistics.undecided is not None:
            policy.undecided = parsed.statistics.undecided
    _apply_limits(policy, parsed.limits)
    if parsed.confidence is not None:
        if parsed.confidence.margin_bins is not None:
            policy.margin_bins = tuple(parsed.confidence.margin_bins)
        if parsed.confidence.confident_margin is not None:
            policy.confident_margin = parsed.confidence.confident_margin
    for key, limits in policy.metric_limits.items():
        for name in limits:
            why = _never_measured(key, Metric(name))
            if why:
                raise UserError(f"{path}: [{key}] {name} {why}: remove the gate")
    return policy, parsed


def _never_measured(table: str, metric: Metric) -> str | None:
    """Why the gate ``metric`` of the table ``table`` ("int8", "embedding.int8", "tflite.int8") can never be
    measured for the artifacts that table gates (None: it can be, on some data). A precision table gates
    probabilities and logits, a kind table its kind, a format table every kind of its format and precision."""
    from edgeship.runtimes import KERNEL_PATH_PRECISIONS, KERNEL_PATHS

    spec = REGISTRY[metric]
    head, _, tail = table.rpartition(".")
    precision = Precision(tail)
    kinds = ({OutputKind(head)} if head in _KIND_TABLES else set(OutputKind) if head
             else {k for k in OutputKind if k.is_classification})
    if not kinds & spec.kinds:
        measured = ", ".join(str(k) for k in OutputKind if k in spec.kinds)
        return f"is never measured for {' or '.join(sorted(str(k) for k in kinds))} outputs (only for {measured})"
    if spec.kernel_path and (precision not in KERNEL_PATH_PRECISIONS
                             or (head in {f.value for f in Format} and Format(head) not in KERNEL_PATHS)):
        paths = ", ".join(f"{f}.{p}" for f in KERNEL_PATHS for p in KERNEL_PATH_PRECISIONS)
        return f"is measured on a second kernel path, which only {paths} files have"
    return None
