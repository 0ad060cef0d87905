"""Files on disk: hashes, and writes that are atomic, so a failed stage never leaves a half-written artifact.

Every artifact is written under a temporary name in its destination folder and renamed into place only when
complete (``os.replace`` is atomic within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeship.errors import EnvironmentProblem, UserError


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a directory (an ``.mlpackage``, a SavedModel): its files' relative paths and
    contents in sorted order, so the same bundle hashes the same wherever it lives."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            _hash_file_into(h, f)
    else:
        _hash_file_into(h, path)
    return h.hexdigest()


def _hash_file_into(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def ensure_output_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check we can write into it, before any long work; one clear line if not:
    :class:`EnvironmentProblem` (exit 3) for a file in its place, a permission or a full disk. ``option`` names the
    flag the user can change."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EnvironmentProblem(f"{option} {path} is a file, not a directory: choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".edgeship-write-check-"):
            pass
    except OSError as e:
        raise EnvironmentProblem(f"cannot write to {option} directory {path}: {e.strerror or e}; choose another "
                                 f"{option}") from None
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path`` (file or directory), on failure it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: coremltools refuses to save an ML Program to a name not ending in .mlpackage.
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if path.is_dir() and not path.is_symlink():
            # A directory cannot be replaced in one step: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def read_structured(path: Path, what: str, missing: str | None = None) -> dict:
    """A TOML or JSON file (by suffix) as a dict; a missing or malformed file is one clear :class:`UserError`.
    ``missing`` replaces the 'not found' message."""
    import json
    import tomllib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(missing or f"{what} not found: {path}") from None
    except PermissionError as e:  # the environment's (exit 3), not a malformed file
        raise EnvironmentProblem(f"cannot read {what} {path}: {e.strerror}; check its permissions") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UserError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a table/object at the top")
    return data
