"""What a validation produces: typed results that serialise to the versioned ``report.json`` schema.

Schema ``schema_version`` 2 (stable keys; new keys may be added, none removed or renamed without a bump)::

    {
      "schema_version": 2,
      "edgeship_version": "0.1.0",
      "created": "2026-11-22T12:00:00+00:00",
      "reference": {"path": "...", "sha256": "..."},
      "data": {"source": "...", "count": 360, "labeled": true, "pixels": "uint8" | "float32"},
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
         "flips_by_margin": [{"margin_from": 0.0, "margin_to": 0.1, "samples": 40, "flips": 3}, ...]
        }
      ],
      "required_formats": ["tflite"],
      "machine": {"cpu_model": "AMD EPYC", "architecture": "x86_64", "cores": 2, "isa": ["sse4_1", "avx2"],
                  "int8_kernel_family": "x86 AVX2 (no VNNI)", "os": "Linux-...", "python": "3.11.7"},
      "confidence": {"margin": "...", "bins": [0.1, 0.3], "confident_margin": 0.3},
      "versions": {"edgeship": "0.1.0", "onnxruntime": "1.31.1", "ai-edge-litert": "2.3.0", ...},
      "passed": true
    }

``equal_values`` and the ``kernel_path_*`` metrics are new in version 2: each int8 file also runs through a
second kernel path of its own runtime (ORT's unfused graph, LiteRT's reference kernels), compared with its first.
``machine`` (new in version 2) is where the latencies were measured (:meth:`edgeship.machine.Machine.to_dict`);
``versions`` holds the version of each runtime and converter; the thread count is per artifact (``threads``).
``input_feed``, ``flips_by_margin``, ``confident_flips``, each flip's ``margin``, ``data.pixels`` and ``confidence``
were added within version 2 (keys added, none removed or renamed): what each artifact was fed (raw uint8 pixels as
MediaPipe feeds a uint8 input, or re-quantised floats), and top-1 flips told apart by the reference's confidence.
``passed`` is true only when no artifact failed and no required format was skipped: ``skipped`` never counts as
passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = 2


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateResult:
    name: str  # the metric or latency figure gated, e.g. "top1_agreement", "latency_p50_ms"
    value: float | None
    limit: float
    op: str  # "<=" or ">="
    passed: bool

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        return f"{self.name} {value} {'meets' if self.passed else 'misses'} {self.op} {self.limit:g}"


@dataclass
class Metrics:
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    accuracy_top1: float | None = None
    accuracy_top5: float | None = None
    accuracy_top1_drop: float | None = None  # reference accuracy minus this artifact's, in [0, 1] units
    equal_values: float | None = None  # share of output values exactly equal to the reference's
    # Share of confident samples (reference top-1 margin >= Report.confidence["confident_margin"]) whose top-1 changed
    confident_flips: float | None = None
    # The artifact's second kernel path against its first (ArtifactResult.kernel_path says which): int8 files only
    kernel_path_top1_agreement: float | None = None
    kernel_path_equal_values: float | None = None
    kernel_path_sqnr_db: float | None = None


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

    @property
    def name(self) -> str:
        return f"{self.format} {self.precision} ({self.runtime})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
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
    # The preprocessing contract check (edgeship.validate.contract.ContractResult), or None when not run
    contract: Any = None

    @property
    def passed(self) -> bool:
        if any(a.status is Status.FAILED for a in self.artifacts):
            return False
        if self.contract is not None and Status(self.contract.status) is Status.FAILED:
            return False
        required = set(self.required_formats)
        return not any(a.status is Status.SKIPPED and a.format in required for a in self.artifacts)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

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
            **({"contract": self.contract.to_dict()} if self.contract is not None else {}),
            "versions": self.versions,
            "passed": self.passed,
        }
