"""What one worker does, whatever the executor: open the artifacts, run a shard of the data set through the one
comparison loop, measure latency.

A :class:`Job` says what to validate and is plain data (paths, the manifest's entries, the reference's source and
spec, settings): it pickles, so an executor can ship it to another process or machine, where a :class:`Session`
opens the runners itself (runners are never pickled). ``Session.compare(start, stop)`` returns a :class:`Partial`
of mergeable statistics (:class:`edgeship.validate.compare.Comparison`, a :class:`edgeship.validate.metrics.Stream`
inside); partials of consecutive shards merged in order equal the partial of the whole set, figure by figure.
``Session.measure`` times each artifact once (:func:`edgeship.validate.latency.measure`).

Faults: an artifact that cannot be opened is skipped (runtime unavailable here) or failed with its reason; one whose
runtime crashes on a batch is failed with its reason, the others go on; an image that cannot be read fails that
image (``Partial.failed_samples``: source and reason), not the run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgeship.errors import UserError
from edgeship.models.spec import ModelSpec
from edgeship.validate.artifacts import ArtifactEntry
from edgeship.validate.compare import Comparison, label_permutation
from edgeship.validate.results import Latency, Status

if TYPE_CHECKING:
    from edgeship.data import Batch, DataSource
    from edgeship.models.loading import LoadedModel
    from edgeship.runtimes.runner import Runner
    from edgeship.validate.contract import ContractCheck


@dataclass
class Job:
    """Everything a worker needs to validate a shard, as plain picklable data."""

    entries: list[ArtifactEntry]
    reference: str  # the reference's source: a file path or "registry:<variant>"
    trust_model: bool
    spec: ModelSpec  # the reference's spec as validate() settled it (the manifest's preprocessing and labels)
    data: str  # the data set (folder or .npy/.npz), already resolved
    count: int  # samples in the data set
    threads: int = 1
    iterations: int = 50
    warmup: int = 5
    batch_size: int = 32
    kernel_path_samples: int = 500
    confidence: dict[str, Any] = field(default_factory=dict)  # Comparison's probabilities, margin_bins, ...
    refused: dict[int, str] = field(default_factory=dict)  # artifacts failed before opening (integrity): reason
    input_range: tuple[float, float] | None = None  # how an array's values map to pixels (edgeship.data)
    resize: str = "stretch"  # how images of another size are fitted (edgeship.types.Resize)
    # An image that cannot be read: False stops the run with its one line (exit 2); True fails that image alone
    # (listed with its reason in Partial.failed_samples) and validates the rest
    skip_bad_images: bool = False
    # the preprocessing contract check's arguments (edgeship.validate.contract.ContractCheck), None: not checked
    contract: dict[str, Any] | None = None
    baked: dict[str, Any] | None = None  # --bake-preprocessing: the preprocessing the files begin with (manifest)
    # containment (edgeship.validate.contained): each artifact's runtime in a child process, each call into it
    # bounded by call_seconds, its address space by memory_mb (0: none); the policy's [limits]
    contain: bool = True
    call_seconds: float = 300.0
    memory_mb: int = 0


@dataclass
class ArtifactPartial:
    """One artifact's share of a shard: its status, and its comparisons when it ran."""

    status: Status = Status.PASSED
    reason: str | None = None
    note: str | None = None  # the runner's note (e.g. coreml-reference: not Apple's kernels)
    load_ms: float | None = None
    first_ms: float | None = None
    kernel_path: str | None = None
    comparison: Comparison | None = None
    second: Comparison | None = None  # its second kernel path against its first (int8 files)
    kernel_path_samples: int = 0
    input_feed: str | None = None

    def merge(self, other: "ArtifactPartial") -> "ArtifactPartial":
        """Append the next shard's share: a failure or skip in any shard wins (first reason kept)."""
        if self.status is not Status.PASSED:
            return self
        if other.status is not Status.PASSED:
            self.status, self.reason, self.comparison, self.second = other.status, other.reason, None, None
            return self
        if self.comparison is None:
            self.comparison, self.second = other.comparison, other.second
        elif other.comparison is not None:
            self.comparison.merge(other.comparison)
            if self.second is not None and other.second is not None:
                self.second.merge(other.second)
        self.kernel_path_samples += other.kernel_path_samples
        for name in ("note", "load_ms", "first_ms", "kernel_path", "input_feed"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(other, name))
        return self


@dataclass
class Partial:
    """A shard's results: per artifact (by its index in ``Job.entries``), plus the images that failed."""

    start: int
    stop: int
    artifacts: dict[int, ArtifactPartial]
    failed_samples: list[tuple[str, str]] = field(default_factory=list)
    node: dict[str, Any] = field(default_factory=dict)  # where it ran (set by the Ray executor)
    conversions: dict[str, int] = field(default_factory=dict)  # the decoder's conversions in this shard (counts)
    contract: ContractCheck | None = None  # the reference's answers for the contract check (mergeable)

    def merge(self, other: "Partial") -> "Partial":
        """Append the next shard (``other.start == self.stop``)."""
        if other.start != self.stop:
            raise ValueError(f"shards must be merged in order: {self.start}-{self.stop} then {other.start}-{other.stop}")
        for i, a in other.artifacts.items():
            self.artifacts[i] = self.artifacts[i].merge(a) if i in self.artifacts else a
        self.failed_samples += other.failed_samples
        if other.contract is not None:
            self.contract = other.contract if self.contract is None else self.contract.merge(other.contract)
        for k, n in other.conversions.items():
            self.conversions[k] = self.conversions.get(k, 0) + n
        self.stop = other.stop
        return self


@dataclass
class Timing:
    """One artifact's latency (ms), the process's peak RSS while it was timed, and the iterations timed."""

    latency: Latency
    peak_rss_bytes: int | None
    iterations: int
    failure: str | None = None  # the runtime failed while being timed (crash, time or memory limit): the reason


def merge_partials(partials: list[Partial]) -> Partial:
    """Partials of consecutive shards (any order given; sorted by start) merged into the whole set's."""
    ordered = sorted(partials, key=lambda p: p.start)
    whole = ordered[0]
    for p in ordered[1:]:
        whole.merge(p)
    return whole


class Session:
    """The artifacts of a :class:`Job` opened in this process: the reference, each artifact's runner and its second
    kernel path. ``reference``: an already loaded :class:`LoadedModel` (the local executor's), else loaded from
    ``job.reference``."""

    def __init__(self, job: Job, reference: LoadedModel | None = None) -> None:
        from edgeship.models.loading import load_model
        from edgeship.runtimes.keras import KerasRunner
        from edgeship.validate.contained import ArtifactRunners, ContainedRunners

        self.job = job
        if reference is None:
            src = job.reference
            reference = load_model(src.split(":", 1)[1] if src.startswith("registry:") else src,
                                   trust_model=job.trust_model,
                                   default_size=(job.spec.input_shape[0], job.spec.input_shape[1]))
            if job.baked:  # the files begin with the declared preprocessing, so the reference must too
                from edgeship.models.bake import bake_like
                from edgeship.models.spec import Preprocessing

                reference = bake_like(reference, Preprocessing.from_dict(job.baked))
            reference.spec = job.spec
        spec = self.spec = job.spec
        self.reference_runner = KerasRunner(reference, threads=job.threads).open()
        self.first_image: np.ndarray | None = None
        self._source: DataSource | None = None
        # each artifact's runners: in a child process of its own (job.contain) or in this one
        self.runners: dict[int, ArtifactRunners | ContainedRunners] = {}
        self.second: set[int] = set()  # artifacts whose second kernel path is open
        self.base: dict[int, ArtifactPartial] = {}  # what opening each artifact gave: status, reason, load time
        self._permutations: dict[int, np.ndarray | None] = {}
        self.contract: ContractCheck | None = None  # this shard's contract check (compare)
        opening: dict[int, ArtifactRunners | ContainedRunners] = {}
        for i, entry in enumerate(job.entries):
            base = self.base[i] = ArtifactPartial()
            if i in job.refused:
                base.status, base.reason = Status.FAILED, job.refused[i]
                continue
            args = (entry.format, entry.precision, entry.path, spec.preprocessing, job.threads,
                    job.kernel_path_samples > 0)
            opening[i] = (ContainedRunners(*args, call_seconds=job.call_seconds, memory_mb=job.memory_mb)
                          if job.contain else ArtifactRunners(*args))
        for i, runners in list(opening.items()):  # contained: every child opens its file at once
            try:
                runners.start()
            except Exception as e:
                self.base[i].status, self.base[i].reason = _opening_failure(e, job.entries[i].format)
                opening.pop(i).close()
        for i, runners in opening.items():
            base = self.base[i]
            try:
                opened = runners.open()
                self._permutations[i] = label_permutation(list(spec.labels), opened.labels)
            except Exception as e:
                base.status, base.reason = _opening_failure(e, job.entries[i].format)
                runners.close()
                continue
            self.runners[i] = runners
            base.note, base.load_ms, base.kernel_path = opened.note, opened.load_ms, opened.kernel_path
            if opened.kernel_path is not None:
                self.second.add(i)

    def source(self) -> DataSource:
        """The data set, opened once per session (a folder is listed once, an array memory-mapped once)."""
        if self._source is None:
            from edgeship.data import open_data

            from edgeship.types import OutputKind

            self._source = open_data(self.job.data, self.spec.input_shape[:2], self.spec.labels,
                                     input_range=self.job.input_range, resize=self.job.resize,
                                     use_labels=OutputKind(self.spec.output_kind).per_image,
                                     masks=self.spec.mask_size)
        return self._source

    def _partial(self, i: int) -> ArtifactPartial:
        b = self.base[i]
        part = ArtifactPartial(status=b.status, reason=b.reason, note=b.note, load_ms=b.load_ms,
                               first_ms=b.first_ms, kernel_path=b.kernel_path)
        if b.status is Status.PASSED:
            labels = list(self.spec.labels)
            part.comparison = Comparison(labels, self._permutations[i], **self.job.confidence)
            if i in self.second:
                part.second = Comparison(labels, record_flips=False, **self.job.confidence)
        return part

    def compare(self, start: int = 0, stop: int | None = None,
                on_batch: Callable[[int], None] | None = None) -> Partial:
        """Samples ``start`` to ``stop`` (a shard; ``start`` on a batch boundary) through the comparison loop: the
        reference answers each batch, every open runner answers the same batch, a Comparison per artifact
        accumulates. ``on_batch(n)`` after each batch (progress)."""
        job = self.job
        stop = job.count if stop is None else stop
        source = self.source()
        before = dict(source.conversions)
        parts = {i: self._partial(i) for i in self.base}
        if job.contract is not None:
            from edgeship.validate.contract import ContractCheck

            self.contract = ContractCheck(**job.contract)
        failed_samples: list[tuple[str, str]] = []
        for batch in source.batches(job.batch_size, start, stop, skip_bad=job.skip_bad_images):
            failed_samples += batch.failed
            n = len(batch.images)
            if n:
                if self.first_image is None:
                    self.first_image = batch.images[:1]
                self._batch(batch, parts)
            if on_batch is not None:
                on_batch(n + len(batch.failed))
        done = {k: n - before.get(k, 0) for k, n in source.conversions.items() if n - before.get(k, 0)}
        contract, self.contract = self.contract, None
        return Partial(start, stop, parts, failed_samples, conversions=done, contract=contract)

    def _batch(self, batch: Batch, parts: dict[int, ArtifactPartial]) -> None:
        from edgeship.validate.contained import failure_reason

        take = max(0, min(len(batch.images), self.job.kernel_path_samples - batch.offset))
        asked = []
        for i, runners in list(self.runners.items()):  # contained runners answer while the reference runs here
            try:
                runners.submit(batch.images, take if i in self.second else 0, self.base[i].first_ms is None)
                asked.append(i)
            except Exception as e:
                self._fail(i, parts[i], failure_reason(e, self.job.entries[i].format))
        ref = self.reference_runner.predict(batch.images)
        if self.contract is not None:
            self.contract.update(ref, batch.labels)
        for i in asked:
            part = parts[i]
            try:
                answer = self.runners[i].result()
                if answer.first_ms is not None:
                    self.base[i].first_ms = part.first_ms = answer.first_ms
                assert part.comparison is not None and (i not in self.second or part.second is not None)
                part.comparison.update(ref, answer.out, batch.images, batch.labels, batch.sources, batch.positions)
                part.input_feed = answer.input_feed
                if answer.second is not None and part.second is not None:
                    part.second.update(answer.out[:take], answer.second, batch.images[:take], None,
                                       batch.sources[:take], batch.offset)
                    part.kernel_path_samples += take
            except Exception as e:  # the runtime failed on this artifact: fail it, keep validating the others
                self._fail(i, part, failure_reason(e, self.job.entries[i].format))

    def _fail(self, i: int, part: ArtifactPartial, reason: str) -> None:
        for b in (self.base[i], part):
            b.status, b.reason = Status.FAILED, reason
        part.comparison = part.second = None
        self.runners.pop(i).close()
        self.second.discard(i)

    def measure(self, which: list[int] | None = None) -> dict[int, Timing]:
        """Latency of each open artifact (or those in ``which``), one after the other, on the data set's first
        image, then each one's runners are closed. Only the backend's inference call is timed, where the runtime
        runs (:meth:`edgeship.validate.contained.ArtifactRunners.time`); the peak RSS is that process's, reset
        before each artifact. An artifact that fails here is left out (its comparison stands)."""
        from edgeship.validate.contained import failure_reason

        job = self.job
        if self.first_image is None:
            batches = self.source().batches(1, skip_bad=True)
            self.first_image = next((b.images[:1] for b in batches if len(b.images)), None)
        timings: dict[int, Timing] = {}
        for i in list(self.runners):
            if which is not None and i not in which:
                continue
            runners = self.runners.pop(i)
            self.second.discard(i)
            try:
                if self.first_image is None:  # no readable sample at all
                    continue
                latency, peak, first_ms = runners.time(self.first_image, job.warmup, job.iterations,
                                                       self.base[i].first_ms is None)
            except Exception as e:  # the comparison stands, the artifact fails with the reason
                timings[i] = Timing(Latency(), None, 0, failure=failure_reason(e, job.entries[i].format))
                continue
            finally:
                runners.close()
            if first_ms is not None:
                self.base[i].first_ms = first_ms
            latency.first, latency.load = self.base[i].first_ms, self.base[i].load_ms
            timings[i] = Timing(latency, peak, job.iterations)
        return timings

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        self.runners.clear()
        self.second.clear()
        self.reference_runner.close()


def _opening_failure(e: Exception, fmt: Any) -> tuple[Status, str]:
    """The status and reason of an artifact whose opening raised ``e``: skipped when its runtime cannot run here,
    failed otherwise (a file its runtime refuses, or a crash while opening it)."""
    from edgeship.runtimes.runner import Unavailable
    from edgeship.validate.contained import failure_reason

    if isinstance(e, Unavailable):
        return Status.SKIPPED, str(e)
    return Status.FAILED, failure_reason(e, fmt, opening=True)


# ---- the executor interface (edgeship.validate.executors: local; edgeship.validate.ray_executor: ray) ------------
@dataclass
class Outcome:
    partial: Partial
    timings: dict[int, Timing]
    machine: dict[str, Any] | None = None  # where latency was measured (None: this machine)
    info: dict[str, Any] = field(default_factory=dict)  # the report's ``executor`` record


class Executor(ABC):
    name: str

    @abstractmethod
    def run(self, job: Job, reference: LoadedModel | None, progress: bool = True) -> Outcome:
        """Validate ``job``; ``reference`` is the driver's loaded reference model (a local executor reuses it)."""
