"""The export stage: float artifacts for TFLite, ONNX and Core ML, recorded in ``DIR/manifest.json``.

Python API::

    from edgeship.export import export
    result = export(model=None, formats=["tflite", "onnx", "coreml"], out="edgeship-out")
    print(result.paths)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeship.errors import UserError
from edgeship.export.common import FLOAT_PRECISIONS, ModelInfo, artifact_name, plan
from edgeship.fileio import atomic_path, ensure_output_dir, sha256_path, size_on_disk
from edgeship.manifest import MANIFEST_NAME, ArtifactRecord, Manifest, tool_versions
from edgeship.models.loading import LoadedModel, load_model
from edgeship.types import Format, Layout, Precision

__all__ = ["export", "ExportResult", "ModelInfo", "FLOAT_PRECISIONS", "open_manifest"]


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: Manifest
    paths: list[Path] = field(default_factory=list)


def export(
    model: str | Path | Any | None = None,
    formats: Sequence[Format | str] = (Format.TFLITE, Format.ONNX, Format.COREML),
    out: str | Path = "edgeship-out",
    *,
    precisions: Sequence[Precision | str] | None = None,
    onnx_layout: Layout | str = Layout.NHWC,
    opset: int = 17,
    deployment_target: str = "iOS16",
    info: ModelInfo | None = None,
    trust_model: bool = False,
    labels: str | Path | None = None,
    loaded: LoadedModel | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (None: the embedded demo; a registry name; a path; a keras.Model) to ``formats``.

    ``precisions``: float precisions to make; each format makes those it supports (TFLite fp32/fp16, ONNX fp32,
    Core ML fp16/fp32); by default TFLite fp32, ONNX fp32 and Core ML fp16.
    """
    from tqdm import tqdm

    fmts = [Format.parse(f, "format") if isinstance(f, str) else Format(f) for f in formats]
    precs = [Precision.parse(p, "precision") if isinstance(p, str) else Precision(p) for p in precisions or []]
    layout = Layout.parse(onnx_layout, "ONNX layout") if isinstance(onnx_layout, str) else Layout(onnx_layout)
    jobs = plan(fmts, precs)
    out_dir = ensure_output_dir(Path(out))
    loaded = loaded or load_model(model, trust_model=trust_model, labels=labels)
    _warn_mediapipe(loaded, fmts, warn or (lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr)))
    info = info or ModelInfo.default_for(loaded.spec.name, loaded.spec.num_classes)
    manifest = open_manifest(out_dir, loaded)
    result = ExportResult(out_dir, out_dir / MANIFEST_NAME, manifest)
    bar = tqdm(jobs, desc="export", unit="artifact", disable=None if progress else True, leave=False)
    for fmt, precision in bar:
        bar.set_postfix_str(f"{fmt} {precision}")
        name = artifact_name(loaded.spec.name, fmt, precision, "_nchw" if fmt is Format.ONNX and layout is Layout.NCHW else "")
        path = out_dir / name
        options = _export_one(loaded, fmt, precision, path, info, layout=layout, opset=opset,
                              deployment_target=deployment_target)
        manifest.add(ArtifactRecord(path=name, format=fmt, precision=precision, sha256=sha256_path(path),
                                    size_bytes=size_on_disk(path), options=options))
        result.paths.append(path)
        manifest.save(out_dir)  # after each artifact, so a later failure keeps the record of what was made
    return result


def _export_one(loaded: LoadedModel, fmt: Format, precision: Precision, path: Path, info: ModelInfo, *,
                layout: Layout, opset: int, deployment_target: str) -> dict[str, Any]:
    spec = loaded.spec
    io = {"input": spec.input_name, "output": spec.output_name, "input_dtype": "float32"}
    with atomic_path(path) as tmp:
        if fmt is Format.TFLITE:
            from edgeship.export.tflite import export_tflite

            tmp.write_bytes(export_tflite(loaded, precision, info))
            return {**io, "layout": "nhwc", "metadata": "tflite"}
        if fmt is Format.ONNX:
            from edgeship.export.onnx import export_onnx

            tmp.write_bytes(export_onnx(loaded, info, layout=layout, opset=opset))
            return {**io, "layout": str(layout), "opset": opset}
        if fmt is Format.COREML:
            from edgeship.export.coreml import export_coreml

            export_coreml(loaded, precision, info, tmp, deployment_target=deployment_target)
            return {"input": spec.input_name, "input_type": "image", "output": "classLabel",
                    "deployment_target": deployment_target}
    raise UserError(f"unknown format {fmt}")  # pragma: no cover - Format.parse guards this


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
    fresh = Manifest(source=loaded.source_dict(), model=loaded.spec.to_dict(),
                     preprocessing=loaded.spec.preprocessing.to_dict(), labels=list(loaded.spec.labels),
                     versions=tool_versions())
    if not (out_dir / MANIFEST_NAME).exists():
        return fresh
    try:
        old = Manifest.load(out_dir)
    except UserError:
        return fresh
    if old.source == fresh.source and old.preprocessing == fresh.preprocessing and old.labels == fresh.labels:
        fresh.artifacts = [a for a in old.artifacts if (out_dir / a.path).exists()]
    return fresh
