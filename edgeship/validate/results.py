"""What a validation produces: typed results that serialise to the versioned ``report.json`` schema.

Schema ``schema_version`` 2 (stable keys; new keys may be added, none removed or renamed without a bump)::

    {
      "schema_version": 2,
      "edgeship_version": "0.1.0",
      "created": "2026-11-22T12:00:00+00:00",
      "reference": {"path": "...", "sha256": "..."},
      "data": {"source": "...", "count": 360, "labeled": true, "pixels": "uint8" | "float32",
               "input_conversions": {"16-bit": 3, "exif_rotated": 1}},
      "preprocessing": {"mean": [..], "std": [..], "color": "rgb", "layout": "nhwc"},
      "labels": ["zero", ...],
      "artifacts": [
        {"path": "...", "format": "tflite", "precision": "fp32", "runtime": "litert",
         "status": "passed" | "failed" | "skipped", "reason": "..." | null,
         "metrics": {"max_abs_error", "mean_abs_error", "cosine", "sqnr_db", "top1_agreement", "top5_overlap",
                     "accuracy_top1", "accuracy_top5", "accuracy_top1_drop", "equal_values", "confident_flips",
                     "kernel_path_top1_agreement", "kernel_path_equal_values", "kernel_path_sqnr_db"},
                                                                                     (null where not measured)
         "latency_ms": {"load", "first", "p50", "p90", "p99", "mean", "std"},         (null where not measured)
         "iterations": 100, "threads": 1, "peak_rss_bytes": 123, "size_bytes": 123,
         "gates": [{"name": "top1_agreement", "value": 1.0, "limit": 0.99, "op": ">=", "passed": true}],
         "flips": [{"index": 3, "source": "heldout/three/0042.png", "reference": "three", "artifact": "eight",
                    "truth": "three", "margin": 0.04}],
         "sample_errors": [..]    (per-sample max abs error, for the error-distribution plot; at most 2,000)
         "layer_sqnr": {"layer": dB, ...} | null   (from the quantise stage's per-layer report, when present)
         "kernel_path": "onnxruntime-unfused: ..." | null, "kernel_path_samples": 360   (int8 files, version 2)
         "input_feed": "raw uint8 pixels (as MediaPipe)" | "re-quantised floats" | "normalised floats" | ... | null,
         "flips_by_margin": [{"margin_from": 0.0, "margin_to": 0.1, "samples": 40, "flips": 3}, ...],
         "integrity": "verified" | "modified: ..." | "not recorded"
        }
      ],
      "required_formats": ["tflite"],
      "machine": {"cpu_model": "AMD EPYC", "architecture": "x86_64", "cores": 2, "isa": ["sse4_1", "avx2"],
                  "int8_kernel_family": "x86 AVX2 (no VNNI)", "os": "Linux-...", "python": "3.11.7"},
      "confidence": {"margin": "...", "bins": [0.1, 0.3], "confident_margin": 0.3},
      "executor": {"name": "local"} | {"name": "ray", "workers": 2, "shards": 8, "nodes": ["10.0.0.5"],
                   "latency_node": {"node_id": "...", "ip": "...", "hostname": "...", "pid": 123}, ...},
      "allow_modified": false,
      "output_kind": "probabilities" | "logits" | "multilabel" | "embedding" | "regression",
      "versions": {"edgeship": "0.1.0", "onnxruntime": "1.31.1", "ai-edge-litert": "2.3.0", ...},
      "passed": true
    }

``equal_values`` and the ``kernel_path_*`` metrics are new in version 2: each int8 file also runs through a
second kernel path of its own runtime (ORT's unfused graph, LiteRT's reference kernels), compared with its first.
``machine`` (new in version 2) is where the latencies were measured (:meth:`edgeship.machine.Machine.to_dict`);
``versions`` holds the version of each runtime and converter; the thread count is per artifact (``threads``).
``input_feed``, ``flips_by_margin``, ``confident_flips``, each flip's ``margin``, ``data.pixels``,
``data.input_conversions`` (the samples each conversion of :mod:`edgeship.data`'s decoder policy was applied to:
16-bit, palette, cmyk, grayscale, alpha_dropped, icc_to_srgb, exif_rotated, input_range...) and ``confidence``
were added within version 2 (keys added, none removed or renamed): what each artifact was fed (raw uint8 pixels as
MediaPipe feeds a uint8 input, or re-quantised floats), and top-1 flips told apart by the reference's confidence.
``executor`` and ``data.failed_samples`` (``[{"source", "reason"}]``, the images that could not be read, each failed
alone) were added within version 2; with the Ray executor, ``machine`` is the node that measured latency.
``integrity`` (per artifact) and ``allow_modified`` were added within version 2: whether each file is the one its
manifest records (size and sha256), and whether ``--allow-modified`` let modified files be validated.

``output_kind`` and the metrics ``label_agreement``, ``mean_average_precision(_drop)`` (multi-label outputs),
``cosine_min`` and ``neighbour_agreement`` (embeddings), ``max_relative_error`` (regression outputs), ``pixel_agreement``,
``mean_iou`` and ``class_iou_min`` (segmentation maps) were added
within version 2; for those four kinds the class metrics (top-1, top-5, accuracy, confident flips) are null.
``passed`` is true only when no artifact failed and no required format was skipped: ``skipped`` never counts as
passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from edgeship.validate.metrics import REGISTRY
from edgeship.validate.units import fmt_pct as _pct

if TYPE_CHECKING:
    from edgeship.validate.contract import ContractResult

SCHEMA_VERSION = 2


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict. A gate on a share of independent samples (the registry's ``counts``: top-1 agreement,
    accuracy, confident flips, ...) also carries its counts and their Wilson bounds, each one-sided at
    ``confidence`` (:func:`edgeship.numerics.decide_rate`): ``decided`` says whether the bound on the far side of
    the observed rate agrees with the verdict, ``needed`` about how many samples at the observed rate would decide
    it. ``passed`` is the verdict: the observed rate, except that an undecided observed pass fails under the
    policy's ``[statistics] undecided = "fail"``. An observed miss is a failure whether decided or not."""

    name: str  # the metric or latency figure gated, e.g. "top1_agreement", "latency_p50_ms"
    value: float | None
    limit: float
    op: str  # "<=" or ">="
    passed: bool
    successes: int | None = None  # counts of a share of samples; None for every other gate
    samples: int | None = None
    confidence: float | None = None
    lower: float | None = None
    upper: float | None = None
    decided: bool | None = None
    needed: int | None = None

    @property
    def undecided(self) -> bool:
        return self.decided is False

    @property
    def observed_pass(self) -> bool:
        """Whether the observed value meets the limit (``passed`` before the policy's undecided rule)."""
        if self.value is None:
            return False
        slack = 1e-9 if self.samples is not None else 0.0  # policy.FRACTION_SLACK: counts at the limit pass
        return self.value >= self.limit - slack if self.op == ">=" else self.value <= self.limit + slack

    def counts_text(self) -> str:
        """``"97.9 % (47/48)"``; the value alone without counts."""
        if self.samples is None or self.value is None:
            return "n/a" if self.value is None else f"{self.value:.6g}"
        return f"{_pct(self.value)} ({self.successes}/{self.samples})"

    def uncertainty(self) -> str:
        """Why the sample cannot decide the gate: ``"undecided at 48 samples (90 % bounds 93.3-99.4 %): about 900
        would tell 97.9 % from 99.5 %"``; "" when decided or without counts."""
        if not self.undecided or self.value is None or self.confidence is None:
            return ""
        bounds = f"{100 * (self.lower or 0.0):.1f}-{100 * (self.upper or 0.0):.1f} %"
        tell = f"{_pct(self.value)} from {100 * self.limit:g} %"
        more = (f"about {self.needed:,} would tell {tell}" if self.needed is not None
                else f"no sample count tells {tell}")
        return f"undecided at {self.samples} samples ({100 * self.confidence:g} % bounds {bounds}): {more}"

    def describe(self) -> str:
        if self.samples is None:
            value = "n/a" if self.value is None else f"{self.value:.6g}"
            return f"{self.name} {value} {'meets' if self.passed else 'misses'} {self.op} {self.limit:g}"
        observed = self.observed_pass
        text = (f"{self.name} {self.counts_text()} {'meets' if observed else 'misses'} {self.op} "
                f"{100 * self.limit:g} %")
        if self.undecided:
            text += f", {self.uncertainty()}"
            if observed and not self.passed:
                text += ' (fails: [statistics] undecided = "fail")'
        return text

    def to_dict(self) -> dict[str, Any]:
        """The five keys of every gate, and the counts and decision of a gate on a share of samples."""
        d = asdict(self)
        if self.samples is None:
            for key in ("successes", "samples", "confidence", "lower", "upper", "decided", "needed"):
                d.pop(key)
        return d


class _MetricValues:
    """For type checkers: every registered metric reads and writes as ``float | None``."""

    if TYPE_CHECKING:
        def __init__(self, **values: float | None) -> None: ...
        def __getattr__(self, name: str) -> float | None: ...
        def __setattr__(self, name: str, value: float | None) -> None: ...


#: One field per metric of :data:`edgeship.validate.metrics.REGISTRY`, in its order, each ``float | None`` (None:
#: not measured): the ``metrics`` of ``report.json``. Generated, so a new metric is declared in one place.
if TYPE_CHECKING:
    Metrics = _MetricValues
else:
    Metrics = make_dataclass("Metrics", [(str(metric), "float | None", field(default=None)) for metric in REGISTRY],
                             bases=(_MetricValues,), namespace={"__module__": __name__})


@dataclass
class Latency:
    load: float | None = None  # ms to open the artifact (create the session / interpreter)
    first: float | None = None  # ms of the first inference (includes lazy initialisation)
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class Flip:
    """A sample whose top-1 label differs between the reference and the artifact."""

    index: int
    source: str  # image path relative to the data root, or "array[i]"
    reference: str
    artifact: str
    truth: str | None = None
    margin: float | None = None  # the reference's top-1 probability minus its runner-up's
    thumbnail_png: bytes | None = field(default=None, repr=False)  # for the HTML report; not in JSON


@dataclass
class DeviceLatency:
    """Latency of an artifact measured on a real device by LiteRT's ``benchmark_model``
    (:mod:`edgeship.validate.device_latency`); times in ms, ``None`` where the log does not give them."""

    device: str  # the name the user gave (--device), e.g. "Pixel 7"
    source: str = ""  # the log file it was read from
    tool: str = "benchmark_model"
    graph: str | None = None  # the model path the tool ran (its "Graph: [...]" line)
    delegate: str = "cpu"  # "xnnpack", "gpu", "nnapi", ... or "cpu" (builtin kernels)
    threads: int | None = None
    runs: int | None = None  # timed runs the statistics are over
    init_ms: float | None = None
    first_ms: float | None = None
    warmup_mean_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p5_ms: float | None = None
    p50_ms: float | None = None  # the log's median (LiteRT builds with StatWithPercentiles)
    p95_ms: float | None = None
    model_size_mb: float | None = None
    peak_memory_mb: float | None = None

    @property
    def label(self) -> str:
        """``"Pixel 7 (gpu, 4 threads)"``: what makes two device figures comparable."""
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{self.device} ({self.delegate}{threads})"


@dataclass
class BaselineCheck:
    """One figure of an artifact beside the same artifact's in the baseline report (``--baseline``).

    ``kind`` says how ``change`` is measured and what ``budget`` bounds: ``"drop"`` (baseline minus this run, in
    the figure's units: fractions for agreements and accuracies, dB for SQNR) or ``"growth"`` (this run over the
    baseline, minus 1: 0.05 is 5 % more). ``passed`` is ``None`` when the check was not made (``note`` says why:
    another machine, no baseline figure, no budget)."""

    figure: str  # "accuracy_top1", "top1_agreement", "sqnr_db", "size_bytes", "latency_p50_ms", "device_p50_ms"
    value: float | None
    baseline: float | None
    change: float | None
    kind: str  # "drop" or "growth"
    budget: float | None
    passed: bool | None
    note: str | None = None
    device: str | None = None  # device figures: DeviceLatency.label


@dataclass
class ArtifactResult:
    path: str
    format: str
    precision: str
    runtime: str
    status: Status
    reason: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    latency_ms: Latency = field(default_factory=Latency)
    iterations: int = 0
    threads: int | None = None
    peak_rss_bytes: int | None = None
    size_bytes: int | None = None
    gates: list[GateResult] = field(default_factory=list)
    flips: list[Flip] = field(default_factory=list)
    sample_errors: list[float] = field(default_factory=list)
    layer_sqnr: dict[str, float] | None = None
    kernel_path: str | None = None  # the second kernel path the file was run through, e.g. "onnxruntime-unfused"
    kernel_path_samples: int = 0  # samples run through it
    input_feed: str | None = None  # what the artifact was fed (edgeship.runtimes.runner.INPUT_FEEDS)
    flips_by_margin: list[dict[str, Any]] = field(default_factory=list)  # per reference-margin bin: samples, flips
    # Each metric that is a share of independent samples: {"top1_agreement": {"successes": 359, "samples": 360}}
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Against the manifest's sha256 and size: "verified", "modified: <what differs>" (failed, or validated as it is
    # with --allow-modified), or "not recorded" (a file given without a manifest listing it)
    integrity: str = "not recorded"
    device_latency: list[DeviceLatency] = field(default_factory=list)  # --latency-from: figures from real devices
    # --baseline: "compared" (same format and precision in the baseline) or "new" (not in it); None without one
    baseline_status: str | None = None
    baseline_checks: list[BaselineCheck] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.format} {self.precision} ({self.runtime})"

    @property
    def undecided_gates(self) -> list[GateResult]:
        """Gates whose sample cannot decide them (a pass among them is shown with a warning)."""
        return [g for g in self.gates if g.undecided]

    def count_of(self, metric: str) -> tuple[int, int] | None:
        c = self.counts.get(metric)
        return (c["successes"], c["samples"]) if c else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["gates"] = [g.to_dict() for g in self.gates]
        d["flips"] = [{k: v for k, v in f.items() if k != "thumbnail_png"} for f in d["flips"]]
        return d


@dataclass
class Report:
    reference: dict[str, Any]
    data: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str]
    artifacts: list[ArtifactResult]
    required_formats: list[str] = field(default_factory=list)
    created: str = ""
    edgeship_version: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)  # edgeship.machine.Machine.to_dict(); {} if not recorded
    # How confidence is measured: {"margin": what the margin is taken of, "bins": edges, "confident_margin": t}
    confidence: dict[str, Any] = field(default_factory=dict)
    # How it ran: {"name": "local"} or, for Ray, {"name": "ray", "address", "workers", "shards", "nodes",
    # "latency_node": {"node_id", "ip", "hostname", "pid"}, ...}; {} if not recorded
    executor: dict[str, Any] = field(default_factory=dict)
    allow_modified: bool = False  # --allow-modified: files differing from their manifest record were validated
    # --baseline: what this run was compared with (edgeship.validate.baseline.compare_with_baseline); None without
    # one. {"path", "created", "edgeship_version", "machine", "missing": [{"format", "precision", "runtime",
    # "path"}], "fail_on_missing", "budgets": {...}}
    baseline: dict[str, Any] | None = None
    # What the output means (probabilities, logits, multilabel, embedding, regression): it chose the metrics and gate tables
    output_kind: str = "logits"
    # The preprocessing contract check (edgeship.validate.contract.ContractResult), or None when not run
    contract: ContractResult | None = None
    # The gates' policy: {"path": the user's file, or the shipped edgeship/validate/policy.toml alone, "sha256": the
    # user's file's} ({} if not recorded): which limits the verdict was decided with
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        if any(a.status is Status.FAILED for a in self.artifacts):
            return False
        if self.contract is not None and Status(self.contract.status) is Status.FAILED:
            return False
        if self.baseline and self.baseline.get("fail_on_missing") and self.baseline.get("missing"):
            return False
        required = set(self.required_formats)
        return not any(a.status is Status.SKIPPED and a.format in required for a in self.artifacts)

    @property
    def exit_code(self) -> int:
        """0 passed; 1 an artifact failed (a gate, a file that is not the one recorded, or an artifact of the baseline
        missing under ``fail_on_missing``); 3 nothing failed but a required format was skipped because its runtime
        cannot run here (the environment, not the artifact)."""
        if self.passed:
            return 0
        missing = bool(self.baseline and self.baseline.get("fail_on_missing") and self.baseline.get("missing"))
        contract = self.contract is not None and Status(self.contract.status) is Status.FAILED
        return 1 if missing or contract or any(a.status is Status.FAILED for a in self.artifacts) else 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "edgeship_version": self.edgeship_version,
            "created": self.created,
            "reference": self.reference,
            "data": self.data,
            "preprocessing": self.preprocessing,
            "labels": list(self.labels),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "required_formats": list(self.required_formats),
            "machine": dict(self.machine),
            "confidence": dict(self.confidence),
            "executor": dict(self.executor),
            "allow_modified": self.allow_modified,
            "output_kind": self.output_kind,
            **({"contract": self.contract.to_dict()} if self.contract is not None else {}),
            "policy": dict(self.policy),
            "versions": self.versions,
            "baseline": None if self.baseline is None else dict(self.baseline),
            "passed": self.passed,
        }
