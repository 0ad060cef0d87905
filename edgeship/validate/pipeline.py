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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.fileio import check_writable_dir, size_on_disk
from edgeship.machine import describe_machine
from edgeship.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, tool_versions
from edgeship.models.loading import DEMO_DIR, LoadedModel, load_model
from edgeship.models.spec import Preprocessing
from edgeship.types import Format, OutputKind, Precision
from edgeship.validate.executors import Executor, get_executor
from edgeship.validate.policy import Policy, load_policy
from edgeship.validate.results import ArtifactResult, Report, Status
from edgeship.validate.shard import Job
from edgeship.runtimes import RUNTIME_NAMES

DEMO_HELDOUT = DEMO_DIR / "heldout"
_SUFFIX_FORMATS = {".tflite": Format.TFLITE, ".onnx": Format.ONNX, ".mlpackage": Format.COREML}


@dataclass
class ArtifactEntry:
    path: Path
    format: Format
    precision: Precision
    manifest: Manifest | None = None
    manifest_dir: Path | None = None
    record: ArtifactRecord | None = None  # what the manifest says the file is (sha256, size); None: not recorded


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
) -> Report:
    """Validate ``artifacts`` (files, or directories holding a manifest.json) and return the report; with
    ``report_dir``, also write report.json, report.md, report.html and junit.xml there.

    ``kernel_path_samples``: how many samples (the first ones) each int8 file's second kernel path runs on; 0 turns
    the portability comparison off. LiteRT's reference kernels are slow (measured: 90 ms an image on a
    MobileNetV2-1.0 at 160x160, XNNPACK 6 ms), hence the cap. ``input_range``: how an .npy/.npz's values map to
    pixels 0-255 (:func:`edgeship.data.open_data`); the decoder's conversions are in ``report.data``.

    The preprocessing contract (:mod:`edgeship.validate.contract`) is checked on the reference's own answers;
    ``expect_accuracy`` (a fraction) adds its top-1 accuracy on labelled data to it; ``report.contract``.

    Integrity: an artifact recorded in a manifest is validated only if it is the file recorded (size and sha256);
    otherwise it fails with what differs, unless ``allow_modified`` (then its ``integrity`` and reason say so).
    Manifest paths outside their directory, and listed files that are missing or of the wrong kind, are
    :class:`UserError`. ``report_dir`` is checked writable before any work (:class:`EnvironmentProblem`).

    ``baseline``: a previous report.json (or a directory holding one): each artifact is also checked against the
    same format and precision there under the policy's ``[baseline]`` budgets (:mod:`edgeship.validate.baseline`).
    ``latency_from``: LiteRT ``benchmark_model`` logs from a real device named ``device``; each joins the artifact
    whose file it ran, gated by ``[device_latency.FORMAT.PRECISION]`` (:mod:`edgeship.validate.device_latency`).
    Both are read before anything runs, so a bad path fails at once.

    ``output_kind`` (probabilities, logits, multilabel, embedding) overrides the kind the manifest recorded at
    export (else the reference model's detected kind); it picks the metrics and the policy's gate tables.

    ``executor``: "local" (default: this process) or "ray" (shards over a Ray cluster at ``address``, ``workers``
    shard tasks in flight; :mod:`edgeship.validate.ray_executor`), or an :class:`Executor`. Both give the same
    figures (latency aside). ``skip_bad_images``: an image that cannot be read is failed alone and listed in
    ``report.data["failed_samples"]`` with its reason (True; the Ray executor's default: one bad file in tens of
    thousands should not cost the cluster run), or stops the run with one :class:`UserError` line (False; the local
    executor's default, so a release is never judged on fewer images than its data set without being told)."""
    from edgeship.data import open_data, parse_input_range

    if kernel_path_samples < 0:
        raise UserError(f"--kernel-path-samples must be 0 (off) or more, got {kernel_path_samples}")
    if threads < 1 or iterations < 1:
        raise UserError(f"--threads and --iterations must be 1 or more, got threads {threads}, iterations {iterations}")
    if not isinstance(executor, Executor):
        executor = get_executor(executor, address=address, workers=workers)
    if expect_accuracy is not None and not 0 < expect_accuracy <= 1:
        raise UserError(f"--expect-accuracy is a fraction in (0, 1] (0.9 for 90 %), got {expect_accuracy}")
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    entries = resolve_artifacts(artifacts)
    device_figures = _device_figures(entries, latency_from, device)
    baseline_report = None
    if baseline is not None:
        from edgeship.validate.baseline import load_baseline

        baseline_report = load_baseline(baseline)
    required = [Format.parse(r, "format") if isinstance(r, str) else Format(r) for r in require]
    if report_dir is not None:  # before the long work: a report that cannot be written fails now, not at the end
        check_writable_dir(Path(report_dir), option="--report")
    ref_model = _reference(reference, entries, trust_model)
    manifest = next((e.manifest for e in entries if e.manifest), None)
    if manifest is not None and not isinstance(reference, LoadedModel):
        # The preprocessing and labels declared at export are the truth the reference is fed; each artifact is
        # fed what its own metadata says, so an artifact whose metadata drifted from the declaration fails.
        ref_model.spec = ref_model.spec.replace(preprocessing=Preprocessing.from_dict(manifest.preprocessing),
                                                labels=tuple(manifest.labels))
        if manifest.model.get("output_kind"):
            ref_model.spec = ref_model.spec.with_output_kind(manifest.model["output_kind"])
        baked = manifest.model.get("baked_preprocessing")
        if baked:  # --bake-preprocessing: the files begin with it, so the reference must too
            from edgeship.models.bake import bake_like

            ref_model = bake_like(ref_model, Preprocessing.from_dict(baked))
    if output_kind is not None:
        ref_model.spec = ref_model.spec.with_output_kind(output_kind)
    spec = ref_model.spec
    source = open_data(data, spec.input_shape[:2], spec.labels, default=DEMO_HELDOUT, input_range=input_range)
    if source.count == 0:
        raise UserError(f"no samples in {source.source}")
    if expect_accuracy is not None and not source.labeled:
        raise UserError(f"--expect-accuracy needs labelled data (class folders or an .npz with labels); "
                        f"{source.source} has none")
    skip = ("random weights (a registry variant) answer alike for every input"
            if ref_model.source_path.startswith("registry:") else
            None if spec.output_kind in (OutputKind.PROBABILITIES, OutputKind.LOGITS) else
            f"a {spec.output_kind} output has no class answers to judge")
    contract = dict(limits=policy.contract, probabilities=spec.outputs_probabilities,
                    expect_accuracy=expect_accuracy, skip=skip)

    # Agreement by confidence: the reference's top-1 margin, on its probabilities (its own, or softmaxed logits)
    confidence = dict(probabilities=spec.outputs_probabilities, margin_bins=policy.margin_bins,
                      confident_margin=policy.confident_margin, kind=spec.output_kind,
                      threshold=policy.label_threshold)
    # Integrity: a file recorded in a manifest must be the file recorded, else it fails unopened (or, with
    # allow_modified, is validated as it is and says so)
    integrity: dict[int, str] = {}
    refused: dict[int, str] = {}
    for i, entry in enumerate(entries):
        if entry.record is not None and entry.manifest_dir is not None:
            modified = entry.record.check_file(entry.manifest_dir)
            integrity[i] = "verified" if modified is None else f"modified: {modified}"
            if modified is not None and not allow_modified:
                refused[i] = modified
    job = Job(entries=entries, reference=ref_model.source_path, trust_model=trust_model, spec=spec,
              data=source.source, count=source.count, threads=threads, iterations=iterations, warmup=warmup,
              batch_size=batch_size, kernel_path_samples=kernel_path_samples, confidence=confidence,
              refused=refused, input_range=parse_input_range(input_range),
              skip_bad_images=(executor.name == "ray") if skip_bad_images is None else skip_bad_images,
              contract=contract, baked=manifest.model.get("baked_preprocessing") if manifest is not None else None)
    outcome = executor.run(job, ref_model, progress=progress)
    merged, timings = outcome.partial, outcome.timings

    results: dict[int, ArtifactResult] = {}
    ran: list[int] = []  # artifacts that ran through the whole set
    for i, entry in enumerate(entries):
        part = merged.artifacts[i]
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
        r.kernel_path_samples = part.kernel_path_samples
        r.flips = part.comparison.flips
        r.flips_by_margin = part.comparison.flips_by_margin()
        r.input_feed = part.input_feed
        r.sample_errors = part.comparison.sample_errors()
        if i in timings:
            t = timings[i]
            r.latency_ms, r.iterations, r.peak_rss_bytes = t.latency, t.iterations, t.peak_rss_bytes
        r.layer_sqnr = _layer_sqnr(entries[i].path)
    notes = {i: merged.artifacts[i].note for i in ran}
    p50_of = {f"{results[i].format}.{results[i].precision}": results[i].latency_ms.p50 for i in ran
              if results[i].latency_ms.p50 is not None}
    for i, figures in device_figures.items():
        results[i].device_latency = figures
    for i in ran:
        r = results[i]
        r.gates = (policy.gate_metrics(r.format, r.precision, r.metrics, spec.output_kind)
                   + policy.gate_latency(f"{r.format}.{r.precision}", r.latency_ms, p50_of)
                   + policy.gate_device_latency(f"{r.format}.{r.precision}", r.device_latency))
        failed = [g for g in r.gates if not g.passed]
        if failed:
            r.status = Status.FAILED
            note = notes[i]  # coreml-reference: says what ran it
            if any(g.name.startswith("kernel_path_") for g in failed):
                note = (f"{r.runtime} on {describe_machine().int8_kernel_family} disagrees with {r.kernel_path}; "
                        "a kernel that saturates on this CPU answers so: see the file's portability record")
            r.reason = "; ".join(g.describe() for g in failed) + (f" ({note})" if note else "")

    missing = [f for f in required if all(e.format is not f for e in entries)]
    artifacts = [results[i] for i in range(len(entries))] + [
        ArtifactResult(path="", format=str(f), precision="-", runtime=RUNTIME_NAMES[f], status=Status.FAILED,
                       reason=f"--require {f}, but no {f} artifact was given") for f in missing]
    report = Report(
        reference={"path": ref_model.source_path, "sha256": ref_model.source_sha256},
        data=source.describe(), preprocessing=spec.preprocessing.to_dict(), labels=list(spec.labels),
        artifacts=artifacts, required_formats=[str(f) for f in required], allow_modified=allow_modified,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), edgeship_version=__version__,
        versions=tool_versions(), machine=outcome.machine or describe_machine().to_dict(),
        contract=merged.contract.result() if merged.contract is not None else None,
        confidence={"margin": "top-1 minus runner-up probability, "
                              + ("the model's own (it ends in a softmax)" if spec.outputs_probabilities
                                 else "from the softmax of its logits"),
                    "bins": list(policy.margin_bins), "confident_margin": policy.confident_margin},
        output_kind=str(spec.output_kind),
        executor=outcome.info,
    )
    if merged.conversions:  # the decoder's conversions: at opening (here) and where the images were read (shards)
        counts = dict(report.data.get("input_conversions") or {})
        for k, n in merged.conversions.items():
            counts[k] = counts.get(k, 0) + n
        report.data["input_conversions"] = dict(sorted(counts.items()))
    if merged.failed_samples:
        report.data["failed_samples"] = [{"source": src, "reason": why} for src, why in merged.failed_samples]
    if baseline_report is not None:
        from edgeship.validate.baseline import compare_with_baseline

        compare_with_baseline(report, baseline_report, policy)
    if report_dir is not None:
        from edgeship.validate.reports import write_reports

        write_reports(report, Path(report_dir))
    return report


def _device_figures(entries: list[ArtifactEntry], logs: Sequence[str | Path],
                    device: str | None) -> dict[int, list[Any]]:
    """``--latency-from`` logs parsed and matched to the artifacts by the file name they ran: {entry index: figures}."""
    if not logs:
        if device:
            raise UserError("--device names the phone of --latency-from logs: pass --latency-from LOG too")
        return {}
    from edgeship.validate.device_latency import match_artifact, read_benchmark_logs

    names = [(e.path.name, str(e.format), str(e.precision)) for e in entries]
    out: dict[int, list[Any]] = {}
    for figures in read_benchmark_logs(logs, device):
        out.setdefault(match_artifact(figures, names), []).append(figures)
    return out


def resolve_artifacts(paths: Sequence[str | Path]) -> list[ArtifactEntry]:
    """Files by suffix, and directories through their manifest.json (every artifact it lists)."""
    if not paths:
        raise UserError("no artifacts given: pass files (.tflite, .onnx, .mlpackage) or a directory with manifest.json")
    entries: list[ArtifactEntry] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and p.suffix != ".mlpackage":
            manifest = Manifest.load(p)
            if not manifest.artifacts:
                raise UserError(f"{p / MANIFEST_NAME} lists no artifacts: export first")
            for a in manifest.artifacts:
                path = Manifest.artifact_path(p, a)
                _check_kind(path, a.format, f"{p / MANIFEST_NAME} lists {a.path}")
                entries.append(ArtifactEntry(path, a.format, a.precision, manifest, p, a))
            continue
        fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise UserError(f"{p}: not an artifact edgeship validates (.tflite, .onnx, .mlpackage, or a directory "
                            "with manifest.json)")
        if not p.exists():
            raise UserError(f"artifact not found: {p}")
        _check_kind(p, fmt, f"--artifacts {p} was given")
        manifest, record = _manifest_beside(p)
        entries.append(ArtifactEntry(p, fmt, record.precision if record else guess_precision(fmt, p), manifest,
                                     p.parent if manifest else None, record))
    return entries


def _check_kind(path: Path, fmt: Format, what: str) -> None:
    """A .tflite/.onnx is a file and an .mlpackage a directory; anything else is one line (exit 2)."""
    if not path.exists():
        raise UserError(f"{what}, but it is missing: re-export, or validate the files that are there")
    want_dir = fmt is Format.COREML
    if path.is_dir() != want_dir:
        raise UserError(f"{what}, but {path} is a {'directory' if path.is_dir() else 'file'}; a {fmt} artifact is "
                        f"a {'directory (.mlpackage)' if want_dir else 'file'}: re-export")


def _manifest_beside(path: Path) -> tuple[Manifest | None, ArtifactRecord | None]:
    if not (path.parent / MANIFEST_NAME).exists():
        return None, None
    try:
        manifest = Manifest.load(path.parent)
    except UserError:
        return None, None
    for a in manifest.artifacts:
        try:
            if Manifest.artifact_path(path.parent, a).resolve() == path.resolve():
                return manifest, a
        except UserError:
            continue
    return None, None


def guess_precision(fmt: Format, path: Path) -> Precision:
    """For a file without a manifest: int8 if its input or weights are 8-bit, fp16 if its weights are fp16."""
    if fmt is Format.TFLITE:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils

        try:
            model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
        except Exception:
            return Precision.FP32  # unreadable: the runner will fail it with the reason
        types = {t.type for g in model.subgraphs for t in g.tensors}
        if types & {schema.TensorType.INT8, schema.TensorType.UINT8}:
            return Precision.INT8
        return Precision.FP16 if schema.TensorType.FLOAT16 in types else Precision.FP32
    if fmt is Format.ONNX:
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:
            return Precision.FP32
        return Precision.INT8 if any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in graph.node) else Precision.FP32
    return Precision.FP16


def _reference(reference: Any, entries: list[ArtifactEntry], trust_model: bool) -> LoadedModel:
    if isinstance(reference, LoadedModel):
        return reference
    if reference is not None:
        return load_model(reference, trust_model=trust_model, echo=_quiet)
    manifest = next((e.manifest for e in entries if e.manifest), None)
    if manifest is not None:
        src = str(manifest.source.get("path", ""))
        if src.startswith("registry:"):
            return load_model(src.split(":", 1)[1], echo=_quiet)
        if Path(src).exists():
            return load_model(src, trust_model=trust_model, echo=_quiet)
        raise UserError(f"the manifest's source model {src or '(none)'} is not here: pass --reference")
    return load_model(None)


def _quiet(_: str) -> None:
    """The reference's in-graph normalisation was announced at export; the manifest's preprocessing rules here."""


def _layer_sqnr(path: Path) -> dict[str, float] | None:
    """The quantise stage's per-layer SQNR report, if it left one beside the artifact."""
    report = path.with_name(path.name + ".layers.json")
    if not report.exists():
        return None
    try:
        data = json.loads(report.read_text())
        return {str(k): float(v) for k, v in data.get("sqnr_db", {}).items()}
    except (OSError, ValueError, AttributeError):
        return None
