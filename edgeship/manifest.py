"""``manifest.json``: what a stage made, from what, with which tools. Later stages add their artifacts to it.

Schema (``schema_version`` 1)::

    {"schema_version": 1, "edgeship_version": "...",
     "source": {"path": "...", "sha256": "...", "relative_path": "..."},
     "resize": "stretch",
     "model": {name, family, alpha, input_shape, num_classes, ...},
     "preprocessing": {"mean": [...], "std": [...], "color": "rgb", "layout": "nhwc"},
     "labels": ["...", ...],
     "artifacts": [{"path": "model.tflite", "format": "tflite", "precision": "fp32", "sha256": "...",
                    "size_bytes": 123, "options": {...}}],
     "versions": {"tensorflow": "...", "tf2onnx": "...", ...}}

``source.path`` is the model as export was given it (relative to where export ran); ``source.relative_path`` (newer
manifests) is the same file relative to the manifest's directory, so validation finds it from any directory, and
``source.sha256`` is checked when validation takes its reference from the manifest (:func:`Manifest.source_model`).
``resize`` (newer manifests; absent: ``stretch``): how images of another size or aspect are fitted to the input
(:class:`edgeship.types.Resize`), which validation and calibration then use.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.fileio import read_structured, write_bytes_atomic
from edgeship.schema import describe
from edgeship.types import Format, Precision

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class ArtifactRecord:
    path: str  # relative to the manifest's directory
    format: Format
    precision: Precision
    sha256: str
    size_bytes: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"], d["precision"] = str(self.format), str(self.precision)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArtifactRecord":
        """One ``artifacts`` entry, type-checked (:class:`_RecordSchema`); raises pydantic's ValidationError."""
        r = _RecordSchema.model_validate(d)
        return cls(path=r.path, format=Format(r.format), precision=Precision(r.precision), sha256=r.sha256,
                   size_bytes=r.size_bytes, options=dict(r.options))

    def check_file(self, directory: Path) -> str | None:
        """Is the file at :meth:`Manifest.artifact_path` the one recorded? None if its size and sha256 match, else
        what differs (one line)."""
        from edgeship.fileio import sha256_path, size_on_disk

        path = Manifest.artifact_path(directory, self)
        size, digest = size_on_disk(path), sha256_path(path)
        if size == self.size_bytes and digest == self.sha256:
            return None
        return (f"{self.path} is not the file the manifest records (sha256 {digest[:12]}..., {size} bytes; "
                f"recorded {self.sha256[:12]}..., {self.size_bytes} bytes): re-export it, or pass --allow-modified "
                "if you changed it on purpose")


class _RecordSchema(BaseModel):
    """The type of one manifest ``artifacts`` entry (keys beyond these are kept for newer edgeship versions)."""

    model_config = ConfigDict(strict=True, extra="allow")
    path: Annotated[str, Field(min_length=1)]
    format: Literal[tuple(f.value for f in Format)]  # type: ignore[valid-type]
    precision: Literal[tuple(p.value for p in Precision)]  # type: ignore[valid-type]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: Annotated[int, Field(ge=0)]
    options: dict[str, Any] = {}


@dataclass
class Manifest:
    source: dict[str, Any]
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str]
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    # Where the preprocessing and the labels came from (edgeship.models.loading.LoadedModel; issue 23, item 3)
    preprocessing_source: str | None = None
    labels_source: str | None = None
    resize: str | None = None  # edgeship.types.Resize; None (an older manifest): stretch

    def add(self, record: ArtifactRecord) -> None:
        """Add or replace (same path) an artifact record."""
        self.artifacts = [a for a in self.artifacts if a.path != record.path] + [record]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "edgeship_version": __version__,
            "source": self.source,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "labels": list(self.labels),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "versions": self.versions,
            **({"preprocessing_source": self.preprocessing_source} if self.preprocessing_source else {}),
            **({"labels_source": self.labels_source} if self.labels_source else {}),
            **({"resize": self.resize} if self.resize else {}),
        }

    def same_model(self, other: "Manifest") -> bool:
        """Do both record the same model, preprocessing and labels? The model is the same file when both record
        its sha256 (wherever it was, and wherever the manifest moved: ``relative_path`` is not compared), else
        the same ``source.path``."""
        a, b = self.source, other.source
        same = a.get("sha256") == b.get("sha256") if a.get("sha256") and b.get("sha256") else (
            a.get("path") == b.get("path") and a.get("sha256") == b.get("sha256"))
        return same and (self.preprocessing, self.labels) == (other.preprocessing, other.labels)

    def source_model(self, directory: Path) -> Path | None:
        """The source model file recorded, found from any working directory: ``source.relative_path`` (relative to
        ``directory``, the manifest's), else ``source.path`` (an older manifest: relative to where export ran);
        None when neither exists. When ``source.sha256`` is recorded the file must match it: a different file is
        one :class:`UserError` line (exit 2) naming both hashes."""
        from edgeship.fileio import sha256_path

        rel, given = self.source.get("relative_path"), self.source.get("path")
        candidates = [Path(directory) / rel] if isinstance(rel, str) and rel else []
        candidates += [Path(given)] if isinstance(given, str) and given else []
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            return None
        recorded = self.source.get("sha256")
        if isinstance(recorded, str) and recorded:
            digest = sha256_path(path)
            if digest != recorded:
                raise UserError(f"{path} is not the model {Path(directory) / MANIFEST_NAME} records (sha256 "
                                f"{digest[:12]}..., recorded {recorded[:12]}...): pass --reference with the model the "
                                "files were made from, or re-export")
        return path

    def save(self, directory: Path) -> Path:
        """Write the manifest atomically, under an exclusive lock on ``directory`` (``flock``): two processes
        recording into one directory (two exports into one ``--out``) both keep their records. A record another
        process saved meanwhile for the same model (same source, preprocessing and labels) whose file still exists
        is kept ahead of this one's (this one's wins for the same path); one for another model is replaced, as a
        sequential export of another model replaces it (issue 29, item 5)."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        with directory_lock(directory):
            merged = list(self.artifacts)
            if path.exists():
                try:
                    disk = Manifest.load(directory)
                except UserError:
                    disk = None
                if disk is not None and disk.same_model(self):
                    mine = {a.path for a in self.artifacts}
                    theirs = [a for a in disk.artifacts if a.path not in mine and (directory / a.path).exists()]
                    merged = theirs + merged
            self.artifacts = merged
            write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @staticmethod
    def artifact_path(directory: Path, record: ArtifactRecord) -> Path:
        """Where ``record``'s file is: inside ``directory``, or :class:`UserError`. An absolute path, a ``..``
        component or a symlink leading out of the directory is refused: a manifest cannot make validate judge a file
        that is not part of the release."""
        rel = Path(record.path)
        if rel.is_absolute() or ".." in rel.parts or record.path.startswith(("/", "\\")):
            raise UserError(f"{Path(directory) / MANIFEST_NAME}: artifact path '{record.path}' leaves the artifacts "
                            "directory; paths must be relative and inside it: re-export")
        path = Path(directory) / rel
        root = Path(directory).resolve()
        if not path.resolve().is_relative_to(root):
            raise UserError(f"{Path(directory) / MANIFEST_NAME}: artifact '{record.path}' leads to {path.resolve()}, "
                            "outside the artifacts directory (a symlink): copy the file in, or re-export")
        for t in path.rglob("*") if path.is_dir() else ():
            if t.is_symlink() and not t.resolve().is_relative_to(root):
                raise UserError(f"{Path(directory) / MANIFEST_NAME}: artifact '{record.path}' is a symlink to "
                                f"{t.resolve()}, outside the artifacts directory: copy the file in, or re-export")
        return path

    @classmethod
    def load(cls, directory: Path) -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        d = read_structured(path, "manifest", missing=f"no {MANIFEST_NAME} in {directory}: export there first")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"{path} has schema_version {d.get('schema_version')!r}; this edgeship reads {SCHEMA_VERSION}")
        try:
            return cls(source=d["source"], model=d["model"], preprocessing=d["preprocessing"], labels=list(d["labels"]),
                       artifacts=[ArtifactRecord.from_dict(a) for a in d.get("artifacts", [])],
                       versions=dict(d.get("versions", {})),
                       preprocessing_source=_text(d.get("preprocessing_source")),
                       labels_source=_text(d.get("labels_source")), resize=_text(d.get("resize")))
        except ValidationError as e:
            raise UserError(f"{path} is not a valid edgeship manifest (artifacts: {describe(e, _RecordSchema)}): "
                            "re-export") from None
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{path} is not a valid edgeship manifest ({type(e).__name__}: {e}): re-export") from None


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` itself (no lock file is left beside the artifacts); waits for the
    holder. Filesystems without ``flock`` (some network mounts) go unlocked rather than failing the write."""
    import fcntl
    import os

    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def tool_versions() -> dict[str, str]:
    """Versions of edgeship and of each converter/runtime, read from package metadata (no heavy imports)."""
    from importlib import metadata

    out = {"edgeship": __version__}
    for dist in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "coremltools", "ai-edge-litert", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
