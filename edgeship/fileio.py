"""Files on disk: hashes, and writes that are atomic, so a failed stage never leaves a half-written artifact.

Every artifact is written under a temporary name in its destination folder and renamed into place only when
complete (``os.replace`` is atomic within one filesystem).

Interruptions: ``edgeship`` turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``), so SIGINT and SIGTERM
run the same cleanup — the temporary is removed, the destination left as it was, and the manifest, written only
after an artifact is complete, names no missing file. The renames that put a finished artifact in place run with
both signals blocked (``pthread_sigmask``), so an interruption never falls between moving an old directory aside
and moving the new one in. A process killed outright (SIGKILL, power loss) cannot clean up: the temporaries it
left (``.<name>.partial-<pid>...``, ``.<name>.old-<pid>``) are removed by the next write into the folder once no
process ``<pid>`` runs any more (:func:`remove_stale_temporaries`).

Disk full, quota, read-only filesystem or permission errors while writing are :class:`EnvironmentProblem` (exit 3):
the environment is at fault, not the input and not the model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from edgeship.errors import ENVIRONMENT_ERRNOS, EnvironmentProblem, UserError

# The temporaries atomic_path makes: ".<stem>.partial-<pid><suffix>" and ".<name>.old-<pid>"
_TEMPORARY = re.compile(r"^\..+\.(?:partial|old)-(?P<pid>\d+)(?:\.[^.]*)?$")
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what CI runners, ``timeout`` and ``docker stop`` send), raised like Ctrl-C's KeyboardInterrupt so
    that the same cleanup runs. The CLI exits 128 + 15 = 143 for it (130 for SIGINT), the shells' convention."""

    signum = signal.SIGTERM


#: Set when SIGTERM arrived: a library that turns the raised Terminated into a plain KeyboardInterrupt (Ray's
#: ray.wait does) still exits 143, not 130
TERMINATED = {"received": False}


def _raise_terminated(signum: int, frame: object) -> None:
    TERMINATED["received"] = True
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated`; the previous handler is restored on exit. A no-op off the
    main thread (Python runs signal handlers there only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while inside (delivered on exit): for steps that must not be cut in two."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no pthread_sigmask (Windows)
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process: alive
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` left in ``folder`` by processes that no longer run (killed
    outright); return what was removed. A temporary of a running process (this one or another) is left alone."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if m and not _pid_alive(int(m.group("pid"))):
            _remove(p)
            removed.append(p)
    return removed


def environment_problem(e: BaseException, what: str) -> EnvironmentProblem | None:
    """An :class:`EnvironmentProblem` for an OSError of the machine (disk full, permissions...), else None."""
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some quota",
                errno.EFBIG: "free some disk space or raise the file size limit"}.get(e.errno, "check its permissions")
        return EnvironmentProblem(f"cannot write {what}: {e.strerror or e}; {hint} and run again")
    if "No space left on device" in str(e):  # converters that wrap the OSError in their own exception
        return EnvironmentProblem(f"cannot write {what}: no space left on device; free some disk space and run again")
    if "Read-only file system" in str(e):
        return EnvironmentProblem(f"cannot write {what}: read-only file system; choose a writable location and run again")
    return None


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
    with open_regular(path, "file") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _kind(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: Path, what: str) -> "io.BufferedReader":
    """``path`` opened for reading in binary, refused at once (one :class:`UserError` line) unless it is a regular
    file: a FIFO or a device would block a read forever or never end (``/dev/zero``), issue 29. The open itself
    cannot block (``O_NONBLOCK``: a FIFO with no writer opens at once); the mode is checked on the open descriptor
    (``fstat``), so the file checked is the file read."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{what} {path} is a {_kind(mode)}, not a regular file: pass the file itself")
        os.set_blocking(fd, True)
        return io.open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of regular file ``path`` (:func:`open_regular`), at most ``max_bytes`` (more: one
    :class:`UserError` line) so a side file or config cannot exhaust memory."""
    with open_regular(path, what) as f:
        data = f.read(-1 if max_bytes is None else max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise UserError(f"{what} {path} is larger than {max_bytes / 1e6:g} MB: not a file edgeship writes or reads")
    return data


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def ensure_output_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check we can write into it, before any long work; one clear line if not:
    :class:`EnvironmentProblem` (exit 3) for a file in its place, a permission or a full disk. ``option`` names the
    flag the user can change. Stale temporaries of dead processes are removed."""
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
    remove_stale_temporaries(path)
    return path


def check_writable_dir(path: Path, option: str = "--report") -> Path:
    """Check, before any long work and without creating anything, that ``path`` is (or could be made) a directory
    we can write into: an existing directory gets a write probe; a missing one needs its nearest existing parent to
    be a writable directory. :class:`EnvironmentProblem` (exit 3) otherwise, naming ``option``. Nothing is left
    behind, so a run that then fails on bad input has written nothing."""
    path = Path(path)
    if path.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".edgeship-write-check-"):
                pass
        except OSError as e:
            raise EnvironmentProblem(f"cannot write to {option} directory {path}: {e.strerror or e}; choose another "
                                     f"{option}") from None
        return path
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EnvironmentProblem(f"cannot write to {option} directory {path}: {parent} is a file, not a directory; "
                                 f"choose another {option}")
    try:  # a probe directory, removed at once (os.access says yes to root where the filesystem says no)
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".edgeship-write-check-"))
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (environment_problem(e, str(path.parent)) or e) from None
    remove_stale_temporaries(path.parent)
    # Keep the suffix: coremltools refuses to save an ML Program to a name not ending in .mlpackage.
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        try:
            yield tmp
        except Exception as e:
            problem = None if isinstance(e, UserError) else environment_problem(e, str(path))  # already one line
            if problem is not None:
                raise problem from e
            raise
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        with signals_deferred():  # an interruption here would leave the old directory aside and no new one
            if path.is_dir() and not path.is_symlink():
                # A directory cannot be replaced in one step: move the old one aside first.
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
    finally:
        with signals_deferred():
            _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


#: The largest config, policy, manifest or report edgeship reads (a real one is a few hundred kB at most)
STRUCTURED_MAX_BYTES = 64 * 1024 * 1024


def read_structured(path: Path, what: str, missing: str | None = None) -> dict:
    """A TOML or JSON file (by suffix) as a dict; a missing or malformed file is one clear :class:`UserError`.
    ``missing`` replaces the 'not found' message."""
    import json
    import tomllib

    path = Path(path)
    try:
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(path)
        text = read_regular_bytes(path, what, STRUCTURED_MAX_BYTES).decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(missing or f"{what} not found: {path}") from None
    except PermissionError as e:  # the environment's (exit 3), not a malformed file
        raise EnvironmentProblem(f"cannot read {what} {path}: {e.strerror}; check its permissions") from None
    except RecursionError:  # a document nested thousands deep (json's and tomllib's parsers recurse)
        raise UserError(f"cannot read {what} {path}: nested too deep to be a file edgeship reads") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UserError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a table/object at the top")
    return data
