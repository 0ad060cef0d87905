"""Each artifact's runtime in a process of its own, so a hostile or broken file fails alone (issue 29, item 2).

A file can do more than raise an exception: crash its runtime natively, exhaust memory (an ONNX memory bomb gets
the whole process OOM-killed) or never return. :class:`ArtifactRunners` is one artifact's runners (its runtime's
and, for an int8 file, its second kernel path's) in this process; :class:`ContainedRunners` is the same interface
served by a child process (``python -m edgeship.validate.contained``), as Polygraphy runs each backend in its own
process. The comparison loop (:class:`edgeship.validate.shard.Session`) talks to either; with containment on (the
default, :class:`edgeship.validate.options.ValidateOptions` ``contain``):

- a Python exception in the child fails that artifact with its type and first line, as in process;
- the child dying (a native crash, the OOM killer: the child asks to be its first choice, ``oom_score_adj`` 1000)
  fails the artifact, naming the signal and the last line the runtime printed;
- a call (opening the file, one batch, the latency run) that does not answer within the policy's
  ``[limits] call_seconds`` kills the child and fails the artifact; ``[limits] memory_mb`` (0: none) caps the
  child's address space (``RLIMIT_AS``), so a memory bomb fails inside the child, under any container limit;
- the other artifacts are still validated and the report is written.

Latency stays honest: the timing loop runs inside the child (:func:`edgeship.validate.latency.measure`: only the
runtime's own call is timed), and ``peak_rss_bytes`` is the child's high-water mark while it is timed, i.e. the
artifact's runtime and model, without TensorFlow and the reference (which the in-process figure included). The
children run a batch while the parent runs the Keras reference on it, so the comparison loop uses both cores.

The protocol: a socket pair, :class:`multiprocessing.connection.Connection` framing, pickled tuples of plain data
(numpy arrays, strings, the artifact's :class:`Preprocessing`), so nothing a native library prints can corrupt it;
the child's stdout and stderr go to a temporary file whose last line names a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from edgeship.errors import UserError

if TYPE_CHECKING:
    from edgeship.models.spec import Preprocessing
    from edgeship.runtimes.runner import Runner
    from edgeship.types import Format, Precision

#: Tests' fault injection: a child whose artifact's file name equals this variable's value kills itself with SIGKILL
#: on its first batch, as the kernel's OOM killer would.
FAULT_ENV = "EDGESHIP_FAULT_KILL_ARTIFACT"


class ArtifactFault(Exception):
    """The artifact's runtime failed it (crashed, died, ran out of time or memory); ``str`` is the reason."""


def describe_exception(e: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of a runtime's exception, without the C++ source locations and signatures runtimes put
    in their messages (ONNX Runtime: ``/onnxruntime_src/.../bfc_arena.cc:360 void* onnxruntime::BFCArena::...(...)``
    before "Failed to allocate memory ..."), at most ``limit`` characters."""
    import re

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = re.sub(r"\S+\.(?:cc|cpp|h|hpp):\d+\s*", "", text)  # source locations
    text = re.sub(r"(?:[\w:<>*&]+\s+)?[\w:<>~]+::\w+\([^()]*\)\s*", "", text)  # C++ signatures
    text = re.sub(r"\s+", " ", text).strip()[:limit]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def failure_reason(e: BaseException, fmt: Format, opening: bool = False) -> str:
    """The reason an artifact fails when opening it (``opening``) or running it raised ``e``: edgeship's own
    one-line errors as they are, anything else as ``<runtime> could not open it|failed to run it: Type: text``."""
    from edgeship.runtimes import RUNTIME_NAMES

    if isinstance(e, (UserError, ArtifactFault)):
        return str(e)
    doing = "could not open it" if opening else "failed to run it"
    return f"{RUNTIME_NAMES[fmt]} {doing}: {describe_exception(e)}"


@dataclass
class Opened:
    """What opening an artifact gave: its own labels (or None), the runner's note, the load time (ms) and, when its
    second kernel path is open, what that path is."""

    labels: list[str] | None
    note: str | None
    load_ms: float | None
    kernel_path: str | None


@dataclass
class Answer:
    """One batch's answers: float outputs (N, ...) of the artifact, of its second kernel path on the first ``take``
    images (or None), the first inference's time (ms, on the batch's first image; None unless asked) and the feed
    the artifact was given (:data:`edgeship.runtimes.runner.INPUT_FEEDS`)."""

    out: np.ndarray
    second: np.ndarray | None
    first_ms: float | None
    input_feed: str | None


class ArtifactRunners:
    """One artifact's runners in this process. ``second``: also open its second kernel path (int8 files,
    :data:`edgeship.runtimes.KERNEL_PATHS`)."""

    def __init__(self, fmt: Format, precision: Precision, path: Path, preprocessing: Preprocessing, threads: int,
                 second: bool) -> None:
        self.args = (fmt, precision, Path(path), preprocessing, threads, second)
        self.runner: Runner | None = None
        self.second: Runner | None = None
        self._pending: tuple[Any, ...] | None = None

    # -- the interface (ContainedRunners has the same) -----------------------------------------------------------
    def start(self) -> None:
        """Begin opening (a contained artifact's child starts on it while the others are asked too)."""

    def open(self) -> Opened:
        """Open the file; raises :class:`edgeship.runtimes.runner.Unavailable` (runtime not usable here) or
        :class:`UserError` (the file cannot be opened)."""
        from edgeship.runtimes import KERNEL_PATHS, kernel_path_runner, runner_for

        fmt, precision, path, preprocessing, threads, second = self.args
        self.runner = runner_for(fmt, path, preprocessing, threads).open()
        kernel_path = None
        if second:
            other = kernel_path_runner(fmt, precision, path, preprocessing, threads)
            if other is not None:
                self.second = other.open()
                kernel_path = f"{other.runtime}: {KERNEL_PATHS[fmt][1]}"
        return Opened(self.runner.labels, getattr(self.runner, "note", None), self.runner.load_ms, kernel_path)

    def submit(self, images: np.ndarray, take: int, first: bool) -> None:
        """Start answering a batch (RGB images (N, H, W, 3), uint8 or float pixels); :meth:`result` collects."""
        self._pending = (images, take, first)

    def result(self) -> Answer:
        assert self._pending is not None
        images, take, first = self._pending
        self._pending = None
        return self.answer(images, take, first)

    def _first_ms(self, image: np.ndarray) -> float:
        """The first inference's time (ms) on one image (1, H, W, 3): what a client's first call costs."""
        runner = self.runner
        assert runner is not None
        runner.infer(runner.feed(image))
        return (runner.last_run_s or 0.0) * 1e3

    def answer(self, images: np.ndarray, take: int, first: bool) -> Answer:
        runner = self.runner
        assert runner is not None
        first_ms = self._first_ms(images[:1]) if first else None
        out = runner.predict(images)
        second = self.second.predict(images[:take]) if self.second is not None and take > 0 else None
        return Answer(out, second, first_ms, getattr(runner, "input_feed", None))

    def time(self, image: np.ndarray, warmup: int, iterations: int, first: bool) -> tuple[Any, int, float | None]:
        """(Latency in ms, this process's peak RSS in bytes while timed, the first inference's ms if ``first``) on
        one image (1, H, W, 3): :func:`edgeship.validate.latency.measure`, after the second kernel path is closed."""
        from edgeship.validate.latency import measure, peak_rss_bytes, reset_peak_rss

        runner = self.runner
        assert runner is not None
        if self.second is not None:
            self.second.close()
            self.second = None
        first_ms = self._first_ms(image) if first else None
        feed = runner.feed(image)
        reset_peak_rss()  # so the mark read below is this artifact's timing
        latency, _ = measure(runner, feed, warmup=warmup, iterations=iterations)
        return latency, peak_rss_bytes(), first_ms

    def close(self) -> None:
        for r in (self.runner, self.second):
            if r is not None:
                r.close()
        self.runner = self.second = None


class ContainedRunners:
    """:class:`ArtifactRunners` served by a child process. ``call_seconds``: the longest any call may take before
    the child is killed and the artifact failed; ``memory_mb``: the child's address-space cap (0: none)."""

    def __init__(self, fmt: Format, precision: Precision, path: Path, preprocessing: Preprocessing, threads: int,
                 second: bool, *, call_seconds: float, memory_mb: int) -> None:
        import socket
        from multiprocessing.connection import Connection

        from edgeship.runtimes import RUNTIME_NAMES

        self.args = (fmt, precision, Path(path), preprocessing, threads, second)
        self.name = Path(path).name
        self.runtime = RUNTIME_NAMES[fmt]
        self.call_seconds = call_seconds
        ours, theirs = socket.socketpair()
        self._log = tempfile.TemporaryFile(prefix="edgeship-runtime-")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "edgeship.validate.contained", str(theirs.fileno()), str(memory_mb)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
                close_fds=True)
        finally:
            theirs.close()
        self.conn: Connection | None = Connection(ours.detach())
        self._started = False

    # -- calls ------------------------------------------------------------------------------------------------------
    def _send(self, method: str, *args: Any) -> None:
        self._started = True
        if self.conn is None:
            raise ArtifactFault(f"{self.runtime}'s process for {self.name} is gone")
        try:
            self.conn.send((method, args))
        except OSError:
            raise self._died() from None

    def _receive(self, what: str) -> Any:
        assert self.conn is not None
        deadline = time.monotonic() + self.call_seconds
        while True:  # poll in short steps, so an interrupt (Ctrl-C) is not held up by a slow call
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise ArtifactFault(f"{self.runtime} did not answer within {self.call_seconds:g} s ({what}); "
                                    "stopped (raise [limits] call_seconds in the policy for a slower machine)")
            try:
                if self.conn.poll(min(left, 1.0)):
                    status, payload = self.conn.recv()
                    break
            except (EOFError, OSError):
                raise self._died() from None
        if status == "ok":
            return payload
        kind, message = payload
        if kind == "unavailable":
            from edgeship.runtimes.runner import Unavailable

            raise Unavailable(message)
        if kind == "user":
            raise UserError(message)
        raise ArtifactFault(message)

    def _call(self, what: str, method: str, *args: Any) -> Any:
        self._send(method, *args)
        return self._receive(what)

    def _died(self) -> ArtifactFault:
        proc = self.proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
                code = proc.returncode
        self._close_conn()
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            how = f"was killed by {sig}" + (" (out of memory, or killed from outside)" if -code == signal.SIGKILL
                                             else "")
        else:
            how = f"exited with code {code}"
        last = self._last_line()
        return ArtifactFault(f"{self.runtime}'s process {how} while running it" + (f": {last}" if last else ""))

    def _last_line(self) -> str:
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - 4096))
            lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines()]
            return next((line for line in reversed(lines) if line), "")[:200]
        except (OSError, ValueError):
            return ""

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_conn()

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- the interface ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._send("open", *self.args)

    def open(self) -> Opened:
        if not self._started:
            self.start()
        return self._receive("opening it")

    def submit(self, images: np.ndarray, take: int, first: bool) -> None:
        self._send("answer", images, take, first)

    def result(self) -> Answer:
        return self._receive("a batch")

    def time(self, image: np.ndarray, warmup: int, iterations: int, first: bool) -> tuple[Any, int, float | None]:
        return self._call("the latency run", "time", image, warmup, iterations, first)

    def close(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.poll() is None:
            try:
                self.conn.send(("close", ()))
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        self._log.close()

    def __del__(self) -> None:  # a session dropped without close (an exception path): no orphan child
        try:
            if getattr(self, "proc", None) is not None and self.proc.poll() is None:  # type: ignore[union-attr]
                self.proc.kill()  # type: ignore[union-attr]
        except Exception:
            pass


# ---- the child ----------------------------------------------------------------------------------------------------
def _serve(fd: int, memory_mb: int) -> NoReturn:
    from multiprocessing.connection import Connection

    from edgeship.runtimes.runner import Unavailable

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole process group
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")  # the OOM killer's first choice: this, not the validator
    except OSError:
        pass
    if sys.platform.startswith("linux"):  # killed with the validator, even mid-call (a call that never returns)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if memory_mb > 0:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn = Connection(fd)
    runners: ArtifactRunners | None = None
    fault = os.environ.get(FAULT_ENV)
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if method == "close":
            break
        try:
            if method == "open":
                runners = ArtifactRunners(*args)
                result: Any = runners.open()
            elif runners is None:
                raise UserError("not opened")
            elif method == "answer":
                if fault and fault == runners.args[2].name:
                    os.kill(os.getpid(), signal.SIGKILL)
                result = runners.answer(*args)
            elif method == "time":
                result = runners.time(*args)
            else:
                raise UserError(f"unknown call {method}")
            conn.send(("ok", result))
        except Unavailable as e:
            conn.send(("error", ("unavailable", str(e))))
        except UserError as e:
            conn.send(("error", ("user", str(e))))
        except Exception as e:  # MemoryError included: under [limits] memory_mb an allocation fails here
            cap = f" (memory_mb = {memory_mb} in the policy's [limits])" if memory_mb and isinstance(
                e, MemoryError) else ""
            fmt = runners.args[0] if runners is not None else args[0]  # (args of "open" are the runners')
            conn.send(("error", ("fault", failure_reason(e, fmt, opening=method == "open") + cap)))
    if runners is not None:
        runners.close()
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown (seconds with coremltools loaded): nothing is left to flush


if __name__ == "__main__":
    # No runtime needs TensorFlow, and coremltools imports it when it can (7 of its 11 s import here): the child
    # never loads it, so a Core ML file opens in about 3 s
    sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]
    from edgeship._tf import quiet_environment
    from edgeship.validate import contained  # the module by its name, so what is pickled back resolves in the parent

    quiet_environment()
    contained._serve(int(sys.argv[1]), int(sys.argv[2]))
