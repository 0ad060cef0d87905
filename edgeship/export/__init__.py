"""The export stage: float artifacts for TFLite, ONNX and Core ML, recorded in ``DIR/manifest.json``.

Python API::

    from edgeship.export import export
    result = export(model=None, formats=["tflite", "onnx", "coreml"], out="edgeship-out")
    print(result.paths)

The options are one typed object (:class:`edgeship.export.options.ExportOptions`, also the ``[export]`` table of
``edgeship.toml`` and the CLI's export arguments); ``export``'s keyword arguments build it. Each format's exporter
is named by its declaration (:data:`edgeship.formats.FORMATS`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgeship.errors import UserError
from edgeship.export import check
from edgeship.export.common import FLOAT_PRECISIONS, ModelInfo, artifact_name, plan
from edgeship.export.options import ExportOptions
from edgeship.fileio import atomic_path, check_writable_dir, ensure_output_dir, sha256_path, size_on_disk
from edgeship.formats import FORMATS
from edgeship.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, tool_versions
from edgeship.types import Format, Layout, Precision

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

__all__ = ["export", "export_with", "ExportOptions", "ExportResult", "ModelInfo", "FLOAT_PRECISIONS", "open_manifest"]


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: Manifest
    paths: list[Path] = field(default_factory=list)


def export(
    model: str | Path | Any | None = None,
    formats: Sequence[Format | str] | None = None,
    out: str | Path = "edgeship-out",
    *,
    precisions: Sequence[Precision | str] | None = None,
    onnx_layout: Layout | str | None = None,
    opset: int | None = None,
    deployment_target: str | None = None,
    info: ModelInfo | None = None,
    trust_model: bool = False,
    labels: str | Path | None = None,
    loaded: LoadedModel | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export ``model`` (None: the embedded demo; a registry name; a path; a keras.Model) to ``formats`` (None:
    every format).

    ``precisions``: float precisions to make; each format makes those it supports (TFLite fp32/fp16, ONNX fp32,
    Core ML fp16/fp32); by default TFLite fp32, ONNX fp32 and Core ML fp16. ``formats``, ``precisions``,
    ``onnx_layout``, ``opset`` and ``deployment_target`` are :class:`ExportOptions`' fields (None: its default);
    ``options``, when given, is used instead of them.
    """
    options = options or ExportOptions.of(formats=None if formats is None else list(formats), precisions=precisions,
                                          onnx_layout=onnx_layout, opset=opset, deployment_target=deployment_target)
    return export_with(options, model, out, info=info, trust_model=trust_model, labels=labels, loaded=loaded,
                       progress=progress, warn=warn)


def export_with(options: ExportOptions, model: str | Path | Any | None = None, out: str | Path = "edgeship-out", *,
                info: ModelInfo | None = None, trust_model: bool = False, labels: str | Path | None = None,
                loaded: LoadedModel | None = None, progress: bool = True,
                warn: Callable[[str], None] | None = None) -> ExportResult:
    """:func:`export` with its options as one object: each (format, precision) of ``options`` through its format's
    exporter (:data:`edgeship.formats.FORMATS`), recorded in ``out``'s manifest after each file."""
    from edgeship.models.loading import load_model

    jobs = plan(list(options.formats), list(options.precisions or []))
    check_writable_dir(Path(out), option="--out")  # nothing made until the model has loaded
    loaded = loaded or load_model(model, trust_model=trust_model, labels=labels)
    out_dir = ensure_output_dir(Path(out))
    warn = warn or (lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr))
    _warn_mediapipe(loaded, options.formats, warn)
    info = info or ModelInfo.default_for(loaded.spec.name, loaded.spec.num_classes)
    manifest = open_manifest(out_dir, loaded)
    result = ExportResult(out_dir, out_dir / MANIFEST_NAME, manifest)
    reference = None  # the Keras model's outputs on the check images, computed once
    from edgeship.progress import progress as progress_bar

    bar = progress_bar(jobs, desc="export", unit="artifact", enabled=progress, comparable=False)
    for fmt, precision in bar:
        bar.set_postfix_str(f"{fmt} {precision}")
        name = artifact_name(loaded.spec.name, fmt, precision, options.file_suffix(fmt))
        path = out_dir / name
        with atomic_path(path) as tmp:
            record = FORMATS[fmt].exporter(loaded, precision, info, tmp, options)
            # A broken file (NaN outputs, a truncated flatbuffer...) is refused here, its temporary removed.
            reference = reference if reference is not None else check.reference_outputs(loaded)
            skipped = check.check_float_file(fmt, precision, tmp, name, loaded, reference)
            if skipped:
                warn(skipped)
        manifest.add(ArtifactRecord(path=name, format=fmt, precision=precision, sha256=sha256_path(path),
                                    size_bytes=size_on_disk(path), options=record))
        result.paths.append(path)
        manifest.save(out_dir)  # after each artifact, so a later failure keeps the record of what was made
    return result


def _warn_mediapipe(loaded: LoadedModel, formats: Sequence[Format], warn: Callable[[str], None]) -> None:
    """One line when the .tflite will carry a preprocessing MediaPipe's ImageClassifier refuses."""
    from edgeship.models.bake import mediapipe_problem

    problem = mediapipe_problem(loaded.spec.preprocessing)
    if Format.TFLITE in formats and problem:
        warn(f"the .tflite declares {problem}, which MediaPipe's ImageClassifier cannot apply (it refuses per-channel "
             "normalisation and feeds RGB); "
             "--bake-preprocessing ([model] bake_preprocessing) makes it the model's first op instead")


def open_manifest(out_dir: Path, loaded: LoadedModel) -> Manifest:
    """The directory's manifest if it records the same source model, else a fresh one (artifacts of another
    model must not be listed beside this one's)."""
    source = loaded.source_dict()
    if source.get("sha256") and Path(str(source.get("path"))).exists():  # a file: found from the manifest too
        import os

        source["relative_path"] = Path(os.path.relpath(Path(source["path"]).resolve(),
                                                       Path(out_dir).resolve())).as_posix()
    fresh = Manifest(source=source, model=loaded.spec.to_dict(),
                     preprocessing=loaded.spec.preprocessing.to_dict(), labels=list(loaded.spec.labels),
                     versions=tool_versions(), preprocessing_source=loaded.preprocessing_source,
                     labels_source=loaded.labels_source, resize=getattr(loaded, "resize", None) or "stretch")
    if not (out_dir / MANIFEST_NAME).exists():
        return fresh
    try:
        old = Manifest.load(out_dir)
    except UserError:
        return fresh
    if old.same_model(fresh):
        fresh.artifacts = [a for a in old.artifacts if (out_dir / a.path).exists()]
    return fresh
