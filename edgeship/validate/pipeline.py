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
from edgeship.fileio import size_on_disk
from edgeship.machine import describe_machine
from edgeship.manifest import MANIFEST_NAME, Manifest, tool_versions
from edgeship.models.loading import DEMO_DIR, LoadedModel, load_model
from edgeship.models.spec import Preprocessing
from edgeship.types import Format, Precision
from edgeship.validate.compare import Comparison, label_permutation
from edgeship.validate.contract import ContractCheck
from edgeship.validate.latency import measure, peak_rss_bytes, reset_peak_rss
from edgeship.validate.policy import Policy, load_policy
from edgeship.validate.results import ArtifactResult, Report, Status
from edgeship.runtimes.runner import Runner, Unavailable
from edgeship.runtimes import KERNEL_PATHS, RUNTIME_NAMES, kernel_path_runner, runner_for
from edgeship.runtimes.keras import KerasRunner

DEMO_HELDOUT = DEMO_DIR / "heldout"
_SUFFIX_FORMATS = {".tflite": Format.TFLITE, ".onnx": Format.ONNX, ".mlpackage": Format.COREML}


@dataclass
class ArtifactEntry:
    path: Path
    format: Format
    precision: Precision
    manifest: Manifest | None = None
    manifest_dir: Path | None = None


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
    expect_accuracy: float | None = None,
) -> Report:
    """Validate ``artifacts`` (files, or directories holding a manifest.json) and return the report; with
    ``report_dir``, also write report.json, report.md, report.html and junit.xml there.

    ``kernel_path_samples``: how many samples (the first ones) each int8 file's second kernel path runs on; 0 turns
    the portability comparison off. LiteRT's reference kernels are slow (measured: 90 ms an image on a
    MobileNetV2-1.0 at 160x160, XNNPACK 6 ms), hence the cap.

    The preprocessing contract (:mod:`edgeship.validate.contract`) is checked on the reference's own answers;
    ``expect_accuracy`` (a fraction) adds its top-1 accuracy on labelled data to it; ``report.contract``."""
    from tqdm import tqdm

    from edgeship.data import open_data

    if kernel_path_samples < 0:
        raise UserError(f"--kernel-path-samples must be 0 (off) or more, got {kernel_path_samples}")
    if expect_accuracy is not None and not 0 < expect_accuracy <= 1:
        raise UserError(f"--expect-accuracy is a fraction in (0, 1] (0.9 for 90 %), got {expect_accuracy}")
    entries = resolve_artifacts(artifacts)
    required = [Format.parse(r, "format") if isinstance(r, str) else Format(r) for r in require]
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    ref_model = _reference(reference, entries, trust_model)
    manifest = next((e.manifest for e in entries if e.manifest), None)
    if manifest is not None and not isinstance(reference, LoadedModel):
        # The preprocessing and labels declared at export are the truth the reference is fed; each artifact is
        # fed what its own metadata says, so an artifact whose metadata drifted from the declaration fails.
        ref_model.spec = ref_model.spec.replace(preprocessing=Preprocessing.from_dict(manifest.preprocessing),
                                                labels=tuple(manifest.labels))
        baked = manifest.model.get("baked_preprocessing")
        if baked:  # --bake-preprocessing: the files begin with it, so the reference must too
            from edgeship.models.bake import bake_like

            ref_model = bake_like(ref_model, Preprocessing.from_dict(baked))
    spec = ref_model.spec
    source = open_data(data, spec.input_shape[:2], spec.labels, default=DEMO_HELDOUT)
    if source.count == 0:
        raise UserError(f"no samples in {source.source}")
    if expect_accuracy is not None and not source.labeled:
        raise UserError(f"--expect-accuracy needs labelled data (class folders or an .npz with labels); "
                        f"{source.source} has none")
    contract = ContractCheck(policy.contract, spec.outputs_probabilities, expect_accuracy,
                             skip="random weights (a registry variant) answer alike for every input"
                             if ref_model.source_path.startswith("registry:") else None)

    reference_runner = KerasRunner(ref_model, threads=threads).open()
    # Agreement by confidence: the reference's top-1 margin, on its probabilities (its own, or softmaxed logits)
    confidence = dict(probabilities=spec.outputs_probabilities, margin_bins=policy.margin_bins,
                      confident_margin=policy.confident_margin)
    results: dict[int, ArtifactResult] = {}
    runners: dict[int, Runner] = {}
    comparisons: dict[int, Comparison] = {}
    second: dict[int, tuple[Runner, Comparison]] = {}  # each int8 file's second kernel path
    for i, entry in enumerate(entries):
        results[i] = ArtifactResult(path=str(entry.path), format=str(entry.format), precision=str(entry.precision),
                                    runtime=RUNTIME_NAMES[entry.format], status=Status.PASSED, threads=threads,
                                    size_bytes=size_on_disk(entry.path) if entry.path.exists() else None)
        try:
            runner = runner_for(entry.format, entry.path, spec.preprocessing, threads).open()
            comparisons[i] = Comparison(list(spec.labels), label_permutation(list(spec.labels), runner.labels),
                                        **confidence)
            runners[i] = runner
            results[i].reason = getattr(runner, "note", None)  # e.g. coreml-reference: not Apple's kernels
            results[i].latency_ms.load = runner.load_ms
            other = kernel_path_runner(entry.format, entry.precision, entry.path, spec.preprocessing, threads)
            if other is not None and kernel_path_samples > 0:
                second[i] = (other.open(), Comparison(list(spec.labels), record_flips=False, **confidence))
                results[i].kernel_path = f"{other.runtime}: {KERNEL_PATHS[entry.format][1]}"
        except Unavailable as e:
            results[i].status, results[i].reason = Status.SKIPPED, str(e)
        except UserError as e:
            results[i].status, results[i].reason = Status.FAILED, str(e)

    bar = tqdm(total=source.count, desc="validate", unit="img", disable=None if progress else True, leave=False)
    first_batch = None
    for batch in source.batches(batch_size):
        first_batch = first_batch if first_batch is not None else batch.images[:1]
        ref = reference_runner.predict(batch.images)
        contract.update(ref, batch.labels)
        for i, runner in list(runners.items()):
            try:
                if results[i].latency_ms.first is None:
                    runner.infer(runner.feed(batch.images[:1]))
                    results[i].latency_ms.first = (runner.last_run_s or 0.0) * 1e3
                out = runner.predict(batch.images)
                comparisons[i].update(ref, out, batch.images, batch.labels, batch.sources, batch.offset)
                take = min(len(batch.images), kernel_path_samples - batch.offset)
                if i in second and take > 0:
                    other, comparison = second[i]
                    comparison.update(out[:take], other.predict(batch.images[:take]), batch.images[:take], None,
                                      batch.sources[:take], batch.offset)
                    results[i].kernel_path_samples += take
            except UserError as e:
                _fail(results[i], str(e), runners, i, second)
            except Exception as e:  # the runtime crashed on this artifact: fail it, keep validating the others
                _fail(results[i], f"{runner.runtime} failed to run it: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}", runners, i, second)
        bar.update(len(batch.images))
    bar.close()

    for i, runner in runners.items():
        r = results[i]
        r.metrics = comparisons[i].metrics()
        if i in second:
            other, comparison = second.pop(i)
            other.close()
            paths = comparison.metrics()
            r.metrics.kernel_path_top1_agreement = paths.top1_agreement
            r.metrics.kernel_path_equal_values = paths.equal_values
            r.metrics.kernel_path_sqnr_db = paths.sqnr_db
        r.flips = comparisons[i].flips
        r.flips_by_margin = comparisons[i].flips_by_margin()
        r.input_feed = runner.input_feed
        r.sample_errors = comparisons[i].sample_errors()
        assert first_batch is not None
        feed = runner.feed(first_batch)
        first, load = r.latency_ms.first, r.latency_ms.load
        reset_peak_rss()  # so the mark read below is this artifact's timing, not the shared comparison loop
        r.latency_ms, _ = measure(runner, feed, warmup=warmup, iterations=iterations)
        r.latency_ms.first, r.latency_ms.load = first, load
        r.iterations = iterations
        r.peak_rss_bytes = peak_rss_bytes()
        r.layer_sqnr = _layer_sqnr(entries[i].path)
        runner.close()
    p50_of = {f"{results[i].format}.{results[i].precision}": results[i].latency_ms.p50 for i in runners
              if results[i].latency_ms.p50 is not None}
    for i in runners:
        r = results[i]
        r.gates = (policy.gate_metrics(r.format, r.precision, r.metrics)
                   + policy.gate_latency(f"{r.format}.{r.precision}", r.latency_ms, p50_of))
        failed = [g for g in r.gates if not g.passed]
        if failed:
            r.status = Status.FAILED
            note = getattr(runners[i], "note", None)  # coreml-reference: says what ran it
            if any(g.name.startswith("kernel_path_") for g in failed):
                note = (f"{r.runtime} on {describe_machine().int8_kernel_family} disagrees with {r.kernel_path}; "
                        "a kernel that saturates on this CPU answers so: see the file's portability record")
            r.reason = "; ".join(g.describe() for g in failed) + (f" ({note})" if note else "")

    contract_result = contract.result()
    missing = [f for f in required if all(e.format is not f for e in entries)]
    artifacts = [results[i] for i in range(len(entries))] + [
        ArtifactResult(path="", format=str(f), precision="-", runtime=RUNTIME_NAMES[f], status=Status.FAILED,
                       reason=f"--require {f}, but no {f} artifact was given") for f in missing]
    report = Report(
        reference={"path": ref_model.source_path, "sha256": ref_model.source_sha256},
        data=source.describe(), preprocessing=spec.preprocessing.to_dict(), labels=list(spec.labels),
        artifacts=artifacts, required_formats=[str(f) for f in required],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), edgeship_version=__version__,
        versions=tool_versions(), machine=describe_machine().to_dict(),
        contract=contract_result,
        confidence={"margin": "top-1 minus runner-up probability, "
                              + ("the model's own (it ends in a softmax)" if spec.outputs_probabilities
                                 else "from the softmax of its logits"),
                    "bins": list(policy.margin_bins), "confident_margin": policy.confident_margin},
    )
    if report_dir is not None:
        from edgeship.validate.reports import write_reports

        write_reports(report, Path(report_dir))
    return report


def _fail(result: ArtifactResult, reason: str, runners: dict[int, Runner], i: int,
          second: dict[int, tuple[Runner, Comparison]]) -> None:
    result.status, result.reason = Status.FAILED, reason
    runners.pop(i).close()
    if i in second:
        second.pop(i)[0].close()


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
            entries += [ArtifactEntry(p / a.path, a.format, a.precision, manifest, p) for a in manifest.artifacts]
            continue
        fmt = _SUFFIX_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise UserError(f"{p}: not an artifact edgeship validates (.tflite, .onnx, .mlpackage, or a directory "
                            "with manifest.json)")
        if not p.exists():
            raise UserError(f"artifact not found: {p}")
        manifest, precision = _manifest_beside(p)
        entries.append(ArtifactEntry(p, fmt, precision or guess_precision(fmt, p), manifest,
                                     p.parent if manifest else None))
    return entries


def _manifest_beside(path: Path) -> tuple[Manifest | None, Precision | None]:
    if not (path.parent / MANIFEST_NAME).exists():
        return None, None
    try:
        manifest = Manifest.load(path.parent)
    except UserError:
        return None, None
    for a in manifest.artifacts:
        if (path.parent / a.path).resolve() == path.resolve():
            return manifest, a.precision
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
