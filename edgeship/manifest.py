"""``manifest.json``: what a stage made, from what, with which tools. Later stages add their artifacts to it.

Schema (``schema_version`` 1)::

    {"schema_version": 1, "edgeship_version": "...",
     "source": {"path": "...", "sha256": "..."},
     "model": {name, family, alpha, input_shape, num_classes, ...},
     "preprocessing": {"mean": [...], "std": [...], "color": "rgb", "layout": "nhwc"},
     "labels": ["...", ...],
     "artifacts": [{"path": "model.tflite", "format": "tflite", "precision": "fp32", "sha256": "...",
                    "size_bytes": 123, "options": {...}}],
     "versions": {"tensorflow": "...", "tf2onnx": "...", ...}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeship import __version__
from edgeship.errors import UserError
from edgeship.fileio import read_structured, write_bytes_atomic
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
        return cls(path=d["path"], format=Format(d["format"]), precision=Precision(d["precision"]),
                   sha256=d["sha256"], size_bytes=int(d.get("size_bytes", 0)), options=dict(d.get("options", {})))


@dataclass
class Manifest:
    source: dict[str, Any]
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str]
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

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
        }

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
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
                       versions=dict(d.get("versions", {})))
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"{path} is not a valid edgeship manifest ({e}): re-export") from None


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
