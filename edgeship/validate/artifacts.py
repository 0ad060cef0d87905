"""The artifacts a validation is given: files by suffix, directories through their manifest.json, each with its
format, precision and (when a manifest records it) the record its integrity is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgeship.errors import UserError
from edgeship.formats import FORMATS, format_of
from edgeship.manifest import MANIFEST_NAME, ArtifactRecord, Manifest
from edgeship.types import Format, Precision

_SUFFIXES = ", ".join(spec.suffix for spec in FORMATS.values())  # ".tflite, .onnx, .mlpackage"
_DIRECTORY_SUFFIXES = {spec.suffix for spec in FORMATS.values() if spec.directory}  # one artifact, not a folder


@dataclass
class ArtifactEntry:
    path: Path
    format: Format
    precision: Precision
    manifest: Manifest | None = None
    manifest_dir: Path | None = None
    record: ArtifactRecord | None = None  # what the manifest says the file is (sha256, size); None: not recorded


def resolve_artifacts(paths: Sequence[str | Path]) -> list[ArtifactEntry]:
    """Files by suffix, and directories through their manifest.json (every artifact it lists)."""
    if not paths:
        raise UserError(f"no artifacts given: pass files ({_SUFFIXES}) or a directory with manifest.json")
    entries: list[ArtifactEntry] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and p.suffix not in _DIRECTORY_SUFFIXES:
            manifest = Manifest.load(p)
            if not manifest.artifacts:
                raise UserError(f"{p / MANIFEST_NAME} lists no artifacts: export first")
            for a in manifest.artifacts:
                path = Manifest.artifact_path(p, a)
                _check_kind(path, a.format, f"{p / MANIFEST_NAME} lists {a.path}")
                entries.append(ArtifactEntry(path, a.format, a.precision, manifest, p, a))
            continue
        fmt = format_of(p.suffix)
        if fmt is None:
            raise UserError(f"{p}: not an artifact edgeship validates ({_SUFFIXES}, or a directory "
                            "with manifest.json)")
        if not p.exists():
            raise UserError(f"artifact not found: {p}")
        _check_kind(p, fmt, f"--artifacts {p} was given")
        beside, record = _manifest_beside(p)
        entries.append(ArtifactEntry(p, fmt, record.precision if record else guess_precision(fmt, p), beside,
                                     p.parent if beside else None, record))
    return entries


def _check_kind(path: Path, fmt: Format, what: str) -> None:
    """A .tflite/.onnx is a file and an .mlpackage a directory (:data:`edgeship.formats.FORMATS`); anything else
    is one line (exit 2)."""
    if not path.exists():
        raise UserError(f"{what}, but it is missing: re-export, or validate the files that are there")
    want_dir = FORMATS[fmt].directory
    if path.is_dir() != want_dir:
        raise UserError(f"{what}, but {path} is a {'directory' if path.is_dir() else 'file'}; a {fmt} artifact is "
                        f"a {f'directory ({FORMATS[fmt].suffix})' if want_dir else 'file'}: re-export")


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
    """For a file without a manifest: its format's probe (int8 if its input or weights are 8-bit, fp16 if its
    weights are fp16), else the format's default float precision."""
    probe = FORMATS[fmt].precision_probe
    return probe(path) if probe is not None else FORMATS[fmt].default_precision