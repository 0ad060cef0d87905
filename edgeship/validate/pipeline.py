"""``validate()``: every artifact in its own runtime against the float reference, gated by policy.

One loop serves every runtime: the data is streamed once, the reference answers each batch, and each open
runner answers the same batch; a :class:`~edgeship.validate.compare.Comparison` per artifact accumulates the
metrics. An artifact that cannot be opened or run fails with its reason while the others are still validated;
one whose runtime is not available here is skipped with its reason (and fails the run only if its format is
required).

Feeds: each runner feeds its file as a client would (:meth:`edgeship.runtimes.runner.Runner.feed`): raw images
(uint8 pixels) go into a uint8 input as they are, as MediaPipe does; float data are normalised and re-quantised.
Each artifact's ``input_feed`` says which. Flips are also counted by the reference's top-1 margin
(``flips_by_margin``, ``confident_flips``; bins and confident margin from the policy's ``[confidence]``).

Portability: each int8 file also runs, on the first ``kernel_path_samples`` samples, through a second kernel path
of its own runtime (:data:`edgeship.runtimes.KERNEL_PATHS`), compared with its first by the same
:class:`Comparison`; the ``kernel_path_*`` gates of the policy judge it, and a failure names both paths and this
machine's int8 kernel family.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.fileio import check_writable_dir, size_on_disk
from edgeship.machine import describe_machine
from edgeship.manifest import Manifest, tool_versions
from edgeship.models.loading import DEMO_DIR, LoadedModel, demo_default, load_model
from edgeship.models.spec import ModelSpec, Preprocessing
from edgeship.schema import check
from edgeship.types import Format, OutputKind
from edgeship.validate.artifacts import ArtifactEntry, guess_precision, resolve_artifacts  # noqa: F401  (API)
from edgeship.validate.executors import Executor, Outcome, get_executor
from edgeship.validate.options import ExecutorName, ValidateOptions
from edgeship.validate.contract import infer_contract, with_inference
from edgeship.validate.policy import Policy, load_policy
from edgeship.validate.results import ArtifactResult, DeviceLatency, Report, Status
from edgeship.validate.shard import Job
from edgeship.runtimes import RUNTIME_NAMES

if TYPE_CHECKING:
    from edgeship.data import DataSource
    from edgeship.models.infer_preprocessing import InferenceResult

DEMO_HELDOUT = DEMO_DIR / "heldout"


def validate(
    artifacts: Sequence[str | Path],
    *,
    reference: str | Path | LoadedModel | None = None,
    data: str | Path | None = None,
    policy: Policy | str | Path | None = None,
    report_dir: str | Path | None = None,
    require: Sequence[str | Format] = (),
    threads: int = 1,
    iterations: int = 50,
    warmup: int = 5,
    batch_size: int = 32,
    trust_model: bool = False,
    progress: bool = True,
    kernel_path_samples: int = 500,
    executor: "str | Executor" = "local",
    address: str | None = None,
    workers: int | None = None,
    skip_bad_images: bool | None = None,
    allow_modified: bool = False,
    baseline: str | Path | None = None,
    latency_from: Sequence[str | Path] = (),
    device: str | None = None,
    input_range: str | tuple[float, float] | None = None,
    output_kind: str | None = None,
    expect_accuracy: float | None = None,
    contain: bool = True,
    resize: str | None = None,
) -> Report:
    """Validate ``artifacts`` (files, or directories holding a manifest.json) and return the report; with
    ``report_dir``, also write report.json, report.md, report.html and junit.xml there (checked writable before
    any work: :class:`EnvironmentProblem`).

    A thin adapter: the keywords are the fields of :class:`ValidateOptions` (documented there; a bad value is one
    :class:`UserError` line), ``policy`` and ``executor`` may also be a loaded :class:`Policy` or an
    :class:`Executor`, and :func:`validate_with` does the work. Not options of the stage: the reference (a path,
    a registry name or a loaded model; default: the manifest's source), ``trust_model``, ``progress``, and
    ``output_kind`` (probabilities, logits, multilabel, embedding), which overrides the kind the manifest recorded
    at export (else the reference model's detected kind) and picks the metrics and the policy's gate tables, and
    ``resize`` (stretch or center-crop), how images of another size are fitted, which overrides the manifest's
    record (else stretch). Raises :class:`UserError` for bad input (one line: an unknown ``resize``, a model the
    manifest's sha256 does not match...) and :class:`EnvironmentProblem` for an unwritable ``report_dir``."""
    text = lambda v: None if v is None else str(v)  # noqa: E731  (paths are strings in the options)
    options = check(ValidateOptions, dict(
        data=text(data), policy=None if isinstance(policy, Policy) else text(policy),
        require=[Format.parse(r, "format") if isinstance(r, str) else Format(r) for r in require],
        threads=threads, iterations=iterations, warmup=warmup, batch_size=batch_size,
        kernel_path_samples=kernel_path_samples, allow_modified=allow_modified, baseline=text(baseline),
        latency_from=[str(x) for x in latency_from], device=device, input_range=input_range,
        executor=executor.name if isinstance(executor, Executor) else ExecutorName.parse(executor, "executor"),
        address=address, workers=workers, skip_bad_images=skip_bad_images, expect_accuracy=expect_accuracy,
        contain=contain,
    ), "validate()", "validate")
    return validate_with(artifacts, options, reference=reference, report_dir=report_dir, trust_model=trust_model,
                         progress=progress, output_kind=output_kind, resize=resize,
                         policy=policy if isinstance(policy, Policy) else None,
                         executor=executor if isinstance(executor, Executor) else None)


def validate_with(artifacts: Sequence[str | Path], options: ValidateOptions, *,
                  reference: str | Path | LoadedModel | None = None, report_dir: str | Path | None = None,
                  trust_model: bool = False, progress: bool = True, output_kind: str | None = None,
                  policy: Policy | None = None, executor: Executor | None = None, resize: str | None = None) -> Report:
    """The stage's core (:func:`validate` is its keyword adapter). ``policy`` and ``executor``: already loaded ones,
    used instead of ``options.policy`` and ``options.executor``; ``resize``: as :func:`validate`'s (None: the
    manifest's, else the loaded reference's, else stretch)."""
    from edgeship.types import Resize

    from edgeship.data import check_data

    o = options
    if executor is None:
        executor = get_executor(o.executor, address=o.address, workers=o.workers)
    _check_expect_accuracy(o)
    policy = policy if policy is not None else load_policy(o.policy)
    entries = resolve_artifacts(artifacts)
    device_figures = _device_figures(entries, o.logs, o.device)
    baseline_report = None
    if o.baseline is not None:
        from edgeship.validate.baseline import load_baseline

        baseline_report = load_baseline(o.baseline)
    if report_dir is not None:  # before the long work: a report that cannot be written fails now, not at the end
        check_writable_dir(Path(report_dir), option="--report")
    check_data(o.data, DEMO_HELDOUT, o.input_range)  # the path and layout before the reference loads
    if resize is not None:
        Resize.parse(str(resize), "--resize")  # before the reference loads
    ref_model = _settled_reference(reference, entries, trust_model, output_kind)
    spec = ref_model.spec
    manifest = _manifest(entries)
    resize = str(Resize.parse(str(resize or (manifest.resize if manifest is not None else None)
                                  or getattr(ref_model, "resize", None) or "stretch"), "--resize"))
    source = open_validation_data(o, spec, resize, demo_default(ref_model, DEMO_HELDOUT))
    integrity, refused = _integrity(entries, o.allow_modified)
    inference = infer_contract(ref_model, source)  # the declared preprocessing against the common conventions
    job = _job(o, entries, ref_model, trust_model, source, policy, refused, executor)
    outcome = executor.run(job, ref_model, progress=progress)
    _verify_again(entries, integrity, outcome)
    results, ran = _results(entries, outcome, o.threads, integrity)
    for i, figures in device_figures.items():
        results[i].device_latency = figures
    _gate(results, ran, policy, spec)
    report = _report(results, entries, o, ref_model, source, policy, outcome, inference)
    if baseline_report is not None:
        from edgeship.validate.baseline import compare_with_baseline

        compare_with_baseline(report, baseline_report, policy)
    if report_dir is not None:
        from edgeship.validate.reports import write_reports

        write_reports(report, Path(report_dir))
    return report


def _settled_reference(reference: str | Path | LoadedModel | None, entries: list[ArtifactEntry], trust_model: bool,
                       output_kind: str | None) -> LoadedModel:
    """The reference model, its spec settled as the files were declared: the manifest's preprocessing, labels,
    output kind and baked preprocessing (unless a loaded model was given), then ``output_kind``."""
    ref_model = _reference(reference, entries, trust_model)
    manifest = _manifest(entries)
    if manifest is not None and not isinstance(reference, LoadedModel):
        # The preprocessing and labels declared at export are the truth the reference is fed; each artifact is
        # fed what its own metadata says, so an artifact whose metadata drifted from the declaration fails.
        ref_model.spec = ref_model.spec.replace(preprocessing=Preprocessing.from_dict(manifest.preprocessing),
                                                labels=tuple(manifest.labels))
        if manifest.preprocessing_source:  # where the export got them (edgeship.models.loading.describe_input)
            ref_model.preprocessing_source = manifest.preprocessing_source
        if manifest.labels_source:
            ref_model.labels_source = manifest.labels_source
        if manifest.model.get("output_kind"):
            ref_model.spec = ref_model.spec.with_output_kind(manifest.model["output_kind"])
        baked = manifest.model.get("baked_preprocessing")
        if baked:  # --bake-preprocessing: the files begin with it, so the reference must too
            from edgeship.models.bake import bake_like

            ref_model = bake_like(ref_model, Preprocessing.from_dict(baked))
    if output_kind is not None:
        ref_model.spec = ref_model.spec.with_output_kind(output_kind)
    return ref_model


def _manifest(entries: list[ArtifactEntry]) -> Manifest | None:
    return next((e.manifest for e in entries if e.manifest), None)


def _integrity(entries: list[ArtifactEntry], allow_modified: bool) -> tuple[dict[int, str], dict[int, str]]:
    """A file recorded in a manifest must be the file recorded, else it fails unopened (or, with
    ``allow_modified``, is validated as it is and says so); any file whose runtime would read a part from outside it
    (:func:`edgeship.validate.artifacts.foreign_parts`) fails unopened: ({index: integrity}, {index: why refused})."""
    integrity: dict[int, str] = {}
    refused: dict[int, str] = {}
    from edgeship.validate.artifacts import foreign_parts

    for i, entry in enumerate(entries):
        if entry.record is not None and entry.manifest_dir is not None:
            modified = entry.record.check_file(entry.manifest_dir)
            integrity[i] = "verified" if modified is None else f"modified: {modified}"
            if modified is not None and not allow_modified:
                refused[i] = modified
        foreign = foreign_parts(entry.path, entry.format)  # a part its runtime would read from outside it
        if foreign is not None:
            refused[i] = foreign
    return integrity, refused


def _verify_again(entries: list[ArtifactEntry], integrity: dict[int, str], outcome: Outcome) -> None:
    """After the run, every file that was "verified" against its manifest is hashed again: one whose bytes changed
    while it was validated (a swap during the run; on Ray the workers open files seconds later) fails, since what
    was judged may not be what the manifest records (issue 29, item 1)."""
    from edgeship.validate.shard import ArtifactPartial

    for i, state in integrity.items():
        entry = entries[i]
        if state != "verified" or entry.record is None or entry.manifest_dir is None:
            continue
        try:
            modified = entry.record.check_file(entry.manifest_dir)
        except (OSError, UserError) as e:  # removed or replaced by something that is not a file
            modified = f"{entry.record.path} can no longer be read: {e}"
        if modified is not None:
            integrity[i] = f"changed during validation: {modified}"
            outcome.partial.artifacts[i] = ArtifactPartial(
                status=Status.FAILED, reason=f"changed while it was validated ({modified}): the file judged may not "
                                             "be the file the manifest records; validate again")


def _job(o: ValidateOptions, entries: list[ArtifactEntry], ref_model: LoadedModel, trust_model: bool,
         source: DataSource, policy: Policy, refused: dict[int, str], executor: Executor) -> Job:
    """The plain-data job every executor runs: the artifacts, the settled reference, the data and the settings
    of the comparison (agreement by confidence, the output kind's threshold) and of the contract check."""
    from edgeship.data import parse_input_range

    spec = ref_model.spec
    skip = ("random weights (a registry variant) answer alike for every input"
            if ref_model.source_path.startswith("registry:") else
            None if spec.output_kind in (OutputKind.PROBABILITIES, OutputKind.LOGITS) else
            f"a {spec.output_kind} output has no class answers to judge")
    contract = dict(limits=policy.contract, probabilities=spec.outputs_probabilities,
                    expect_accuracy=o.expect_accuracy, skip=skip,
                    class_answers=OutputKind(spec.output_kind).is_classification)
    # Agreement by confidence: the reference's top-1 margin, on its probabilities (its own, or softmaxed logits)
    confidence = dict(probabilities=spec.outputs_probabilities, margin_bins=policy.margin_bins,
                      confident_margin=policy.confident_margin, kind=spec.output_kind,
                      threshold=policy.label_threshold, map_size=spec.mask_size)
    manifest = _manifest(entries)
    return Job(entries=entries, reference=ref_model.source_path, trust_model=trust_model,
               spec=spec, data=source.source, count=source.count, threads=o.threads, iterations=o.iterations,
               warmup=o.warmup, batch_size=o.batch_size, kernel_path_samples=o.kernel_path_samples,
               confidence=confidence, refused=refused, input_range=parse_input_range(o.input_range),
               resize=str(getattr(source, "resize", "stretch")),
               skip_bad_images=(executor.name == "ray") if o.skip_bad_images is None else o.skip_bad_images,
               contract=contract, baked=manifest.model.get("baked_preprocessing") if manifest is not None else None,
               contain=o.contain, call_seconds=policy.call_seconds, memory_mb=policy.memory_mb)


def _results(entries: list[ArtifactEntry], outcome: Outcome, threads: int,
             integrity: dict[int, str]) -> tuple[dict[int, ArtifactResult], list[int]]:
    """Each artifact's result from the merged partial and the timings, and the indices of those that ran through
    the whole set (the ones gated)."""
    results: dict[int, ArtifactResult] = {}
    ran: list[int] = []
    for i, entry in enumerate(entries):
        part = outcome.partial.artifacts[i]
        r = results[i] = ArtifactResult(
            path=str(entry.path), format=str(entry.format), precision=str(entry.precision),
            runtime=RUNTIME_NAMES[entry.format], status=part.status, threads=threads,
            size_bytes=size_on_disk(entry.path) if entry.path.exists() else None)
        r.reason = part.reason if part.status is not Status.PASSED else part.note
        if i in integrity:
            r.integrity = integrity[i]
            if r.integrity.startswith("modified") and part.status is Status.PASSED:
                r.reason = "; ".join(filter(None, ["modified since the manifest, validated as it is "
                                                   "(--allow-modified)", r.reason]))
        r.latency_ms.load, r.latency_ms.first = part.load_ms, part.first_ms
        r.kernel_path = part.kernel_path
        if part.status is not Status.PASSED or part.comparison is None:
            continue
        ran.append(i)
        r.metrics = part.comparison.metrics(part.second)
        r.counts = {k: {"successes": hits, "samples": n}
                    for k, (hits, n) in part.comparison.counts(part.second).items()}
        r.kernel_path_samples = part.kernel_path_samples
        r.flips = part.comparison.flips
        r.flips_by_margin = part.comparison.flips_by_margin()
        r.input_feed = part.input_feed
        r.sample_errors = part.comparison.sample_errors()
        if i in outcome.timings:
            t = outcome.timings[i]
            if t.failure is not None:  # it ran through the data, then failed while timed: a failed artifact
                r.status, r.reason = Status.FAILED, f"while timing it: {t.failure}"
            r.latency_ms, r.iterations, r.peak_rss_bytes = t.latency, t.iterations, t.peak_rss_bytes
        r.layer_sqnr = _layer_sqnr(entries[i].path)
    return results, ran


def _gate(results: dict[int, ArtifactResult], ran: list[int], policy: Policy, spec: ModelSpec) -> None:
    """The policy's metric, latency and device-latency gates of each artifact that ran; a failed gate fails it
    with every failed gate in its reason."""
    p50_of = {f"{results[i].format}.{results[i].precision}": p50 for i in ran
              if (p50 := results[i].latency_ms.p50) is not None}
    for i in ran:
        r = results[i]
        key = f"{r.format}.{r.precision}"
        counts = {k: (c["successes"], c["samples"]) for k, c in r.counts.items()}
        r.gates = (policy.gate_metrics(r.format, r.precision, r.metrics, spec.output_kind, counts,
                                         qat=bool(spec.qat))
                   + policy.gate_latency(key, r.latency_ms, p50_of)
                   + policy.gate_device_latency(key, r.device_latency))
        failed = [g for g in r.gates if not g.passed]
        prior = r.reason if r.status is Status.FAILED else None  # it failed while timed (Timing.failure)
        if failed:
            r.status = Status.FAILED
            # what ran it (coreml-reference's note) is the runtime column's, not a reason: a reason says why
            note = None
            if any(g.name.startswith("kernel_path_") for g in failed):
                note = (f"{r.runtime} on {describe_machine().int8_kernel_family} disagrees with {r.kernel_path}; "
                        "a kernel that saturates on this CPU answers so: see the file's portability record")
            r.reason = "; ".join(filter(None, [prior, "; ".join(g.describe() for g in failed)
                                               + (f" ({note})" if note else "")]))


def _report(results: dict[int, ArtifactResult], entries: list[ArtifactEntry], o: ValidateOptions,
            ref_model: LoadedModel, source: DataSource, policy: Policy, outcome: Outcome,
            inference: InferenceResult | None = None) -> Report:
    """The report: the artifacts (and a failed line per required format not given), what was validated against
    what, where and how."""
    spec, merged = ref_model.spec, outcome.partial
    missing = [f for f in o.require if all(e.format is not f for e in entries)]
    artifacts = [results[i] for i in range(len(entries))] + [
        ArtifactResult(path="", format=str(f), precision="-", runtime=RUNTIME_NAMES[f], status=Status.FAILED,
                       reason=f"--require {f}, but no {f} artifact was given") for f in missing]
    report = Report(
        reference={"path": ref_model.source_path, "sha256": ref_model.source_sha256},
        data=source.describe(), preprocessing=spec.preprocessing.to_dict(), labels=list(spec.labels),
        artifacts=artifacts, required_formats=[str(f) for f in o.require], allow_modified=o.allow_modified,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), edgeship_version=__version__,
        versions=tool_versions(), machine=outcome.machine or describe_machine().to_dict(),
        contract=with_inference(merged.contract.result() if merged.contract is not None else None, inference),
        confidence={"margin": "top-1 minus runner-up probability, "
                              + ("the model's own (it ends in a softmax)" if spec.outputs_probabilities
                                 else "from the softmax of its logits"),
                    "bins": list(policy.margin_bins), "confident_margin": policy.confident_margin},
        output_kind=str(spec.output_kind),
        executor=outcome.info,
        policy=policy.describe(),
    )
    if merged.conversions:  # the decoder's conversions: at opening (here) and where the images were read (shards)
        counts = dict(report.data.get("input_conversions") or {})
        for k, n in merged.conversions.items():
            counts[k] = counts.get(k, 0) + n
        report.data["input_conversions"] = dict(sorted(counts.items()))
    if merged.failed_samples:
        report.data["failed_samples"] = [{"source": src, "reason": why} for src, why in merged.failed_samples]
    return report


def _check_expect_accuracy(o: ValidateOptions) -> None:
    if o.expect_accuracy is not None and not 0 < o.expect_accuracy <= 1:
        raise UserError(f"--expect-accuracy is a fraction in (0, 1] (0.9 for 90 %), got {o.expect_accuracy}")


def open_validation_data(o: ValidateOptions, spec: Any, resize: str = "stretch",
                         default: Path | None = DEMO_HELDOUT) -> DataSource:
    """The validation set ``o.data`` (default: ``default``, the demo's held-out images) at ``spec``'s input size: a folder's files
    listed and its layout checked, an array's header read; nothing decoded. Raises :class:`UserError` for a missing
    path, a mixed layout, class folders unknown to the labels, no samples, or ``--expect-accuracy`` without labels.
    ``resize``: how images of another size or aspect are fitted (:func:`edgeship.data.fit`); ``default``: the set
    when ``o.data`` is None (None: refused; :func:`edgeship.models.loading.demo_default`)."""
    from edgeship.data import open_data
    from edgeship.types import OutputKind

    # only a per-image class output has a class per image: otherwise class folders and stored labels are not read
    source = open_data(o.data, spec.input_shape[:2], spec.labels, default=default, input_range=o.input_range,
                       use_labels=OutputKind(spec.output_kind).per_image, masks=spec.mask_size, resize=resize)
    if source.count == 0:
        raise UserError(f"no samples in {source.source}")
    masks = source.masks_unused  # truth the model cannot use would be skipped without a word: refused instead
    if masks is not None:
        raise UserError(f"{o.data} holds ground-truth masks ({masks}), but the model's output is "
                        f"{OutputKind(spec.output_kind).value}, not a segmentation map: give its classes (--labels) or "
                        "--output-kind segmentation if it is one, else validate without the masks")
    if o.expect_accuracy is not None and not source.labeled:
        raise UserError(f"--expect-accuracy needs labelled data (class folders or an .npz with labels); "
                        f"{source.source} has none")
    return source


def preflight(o: ValidateOptions, loaded: LoadedModel | None = None, demo_data: bool = True) -> None:
    """Everything of ``o`` that can be checked without running a model, for a caller with slow work before
    validating (``edgeship run`` exports and quantises first; issue 23, item 4): the policy file, ``--latency-from``
    logs, the baseline report, ``--expect-accuracy``, the data set's path and layout, and with the ``loaded`` model
    the data set against its labels and input size (:func:`open_validation_data`); before it loads, ``demo_data``
    False (:func:`edgeship.models.loading.source_takes_demo_data`) refuses a missing data set. Raises the
    :class:`UserError` :func:`validate_with` would raise later."""
    _check_expect_accuracy(o)
    load_policy(o.policy)
    if o.logs:
        from edgeship.validate.device_latency import read_benchmark_logs

        read_benchmark_logs(o.logs, o.device)
    elif o.device:
        _device_figures([], o.logs, o.device)  # --device without logs
    if o.baseline is not None:
        from edgeship.validate.baseline import load_baseline

        load_baseline(o.baseline)
    if loaded is None:
        from edgeship.data import check_data

        check_data(o.data, DEMO_HELDOUT if demo_data else None, o.input_range)
    else:
        open_validation_data(o, loaded.spec, loaded.resize, demo_default(loaded, DEMO_HELDOUT))


def _device_figures(entries: list[ArtifactEntry], logs: Sequence[str | Path],
                    device: str | None) -> dict[int, list[DeviceLatency]]:
    """``--latency-from`` logs parsed and matched to the artifacts by the file name they ran: {entry index: figures}."""
    if not logs:
        if device:
            raise UserError("--device names the phone of --latency-from logs: pass --latency-from LOG too")
        return {}
    from edgeship.validate.device_latency import match_artifact, read_benchmark_logs

    names = [(e.path.name, str(e.format), str(e.precision)) for e in entries]
    out: dict[int, list[DeviceLatency]] = {}
    for figures in read_benchmark_logs(logs, device):
        out.setdefault(match_artifact(figures, names), []).append(figures)
    return out


def _reference(reference: str | Path | LoadedModel | None, entries: list[ArtifactEntry],
               trust_model: bool) -> LoadedModel:
    if isinstance(reference, LoadedModel):
        return reference
    manifest = next((e.manifest for e in entries if e.manifest), None)
    # a model of dynamic input size (--input-size at export) is reloaded at the size its files were made at
    shape = manifest.model.get("input_shape") if manifest is not None else None
    size = (int(shape[0]), int(shape[1])) if isinstance(shape, list) and len(shape) == 3 else None
    if reference is not None:
        return load_model(reference, trust_model=trust_model, echo=_quiet, default_size=size)
    if manifest is not None:
        src = str(manifest.source.get("path", ""))
        if src.startswith("registry:"):
            return load_model(src.split(":", 1)[1], echo=_quiet)
        where = next((e.manifest_dir for e in entries if e.manifest is manifest and e.manifest_dir), Path("."))
        found = manifest.source_model(where)  # relative to the manifest, else to here; its sha256 checked
        if found is not None:
            return load_model(found, trust_model=trust_model, echo=_quiet, default_size=size)
        raise UserError(f"the manifest's source model {src or '(none)'} is not here: pass --reference")
    return load_model(None)


def _quiet(_: str) -> None:
    """The reference's in-graph normalisation was announced at export; the manifest's preprocessing rules here."""


def _layer_sqnr(path: Path) -> dict[str, float] | None:
    """The quantise stage's per-layer SQNR report, if it left one beside the artifact: ``{layer: dB}``. It only
    feeds a plot, so a side file that is not a regular file of at most 16 MB (a FIFO would block a plain read), not
    JSON, or not ``{"sqnr_db": {name: number}}`` is left out, never an error (issue 29: a malformed one ended the
    run with exit 4)."""
    from edgeship.fileio import read_regular_bytes

    report = path.with_name(path.name + ".layers.json")
    if not report.exists():
        return None
    try:
        data = json.loads(read_regular_bytes(report, "per-layer report", 16 * 2**20))
        return {str(k): float(v) for k, v in data["sqnr_db"].items()}
    except (OSError, UserError, ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None
