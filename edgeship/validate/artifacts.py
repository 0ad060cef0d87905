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

def foreign_parts(path: Path, fmt: Format) -> str | None:
    """Why ``path`` would make its runtime read a file that is not part of it, or None (issue 29, item 1). Judged is
    what was hashed: an ``.mlpackage``'s items as its ``Manifest.json`` names them must be regular files inside the
    package (they are hashed with it), and an ONNX file must be self-contained — edgeship writes no external data,
    and ONNX Runtime would read an external-data location from beside the file, unhashed and unrecorded. One line."""
    try:
        if fmt is Format.COREML:
            return _package_items(path)
        if fmt is Format.ONNX:
            return _onnx_external_data(path)
    except UserError as e:
        return str(e)
    return None


def _inside(root: Path, rel: str, what: str) -> str | None:
    target = root / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"{what} '{rel}' leaves {root.name}: refused (re-export the artifact)"
    if target.is_symlink() or not target.resolve().is_relative_to(root.resolve()):
        return f"{what} '{rel}' is a link out of {root.name}: refused (re-export the artifact)"
    if target.is_dir():  # a folder item (Core ML's weights/): regular files in it, no links
        odd = next((f for f in sorted(target.rglob("*")) if f.is_symlink() or not (f.is_file() or f.is_dir())), None)
        if odd is not None:
            return (f"{what} '{rel}' holds {odd.relative_to(target)}, a link or not a regular file: refused "
                    "(re-export the artifact)")
        return None
    if not target.is_file():
        return f"{what} '{rel}' is missing or not a regular file in {root.name} (re-export the artifact)"
    return None


def _package_items(package: Path) -> str | None:
    """Each item path of the package's Manifest.json (relative to its Data folder) inside the package."""
    from edgeship.fileio import read_structured

    manifest = package / "Manifest.json"
    if not manifest.is_file():
        return f"{package.name} has no Manifest.json: not an .mlpackage (re-export it)"
    entries = read_structured(manifest, "Core ML package manifest").get("itemInfoEntries")
    if not isinstance(entries, dict) or not entries:
        return f"{manifest} lists no items: not an .mlpackage edgeship wrote (re-export it)"
    for entry in entries.values():
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not rel:
            return f"{manifest}: an item without a path (re-export the artifact)"
        why = _inside(package / "Data", rel, "package item")
        if why is not None:
            return why
    return None


def _onnx_external_data(path: Path) -> str | None:
    """The first tensor whose data the file keeps elsewhere (graph initialisers, node attributes, subgraphs)."""
    import onnx

    from edgeship.fileio import read_regular_bytes

    try:
        model = onnx.load_model_from_string(read_regular_bytes(path, "ONNX model"))
    except UserError:
        raise
    except Exception:  # not a readable ONNX protobuf: its runtime fails it with the reason
        return None

    def tensors(graph: onnx.GraphProto):
        yield from graph.initializer
        yield from (s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    for t in tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in t.external_data if e.key == "location"), "?")
            return (f"{path.name} keeps tensor '{t.name}' in an external file '{where}': edgeship validates "
                    "self-contained ONNX files only (what is hashed is what runs); re-export it")
    return None
