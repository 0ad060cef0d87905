"""Progress that a terminal and a CI log can both read (issue 27, item 3).

One constructor, :func:`progress`, for every stage's long work, with tqdm's small interface (``update``,
``set_postfix_str``, ``close``, iteration, ``with``). Where the output goes decides its form:

* **a terminal** (stderr is a TTY): a tqdm bar; with an ETA only when the steps are ``comparable`` (images of one
  size, artifacts of one export), since an ETA over steps that differ tenfold (calibrate, then a Core ML
  quantisation) is meaningless;
* **no terminal** (a CI job, a pipe, a log file): one line per finished step with its elapsed time, and a line at
  least every :data:`HEARTBEAT_S` seconds during a long step, so a CI no-output timeout (often 10 minutes) never
  fires on a healthy run and a log shows where the time went:
  ``edgeship: quantize: tflite int8 done in 41.2 s (step 2/5, 63.0 s so far)``.

``EDGESHIP_PROGRESS`` (``bar``, ``lines`` or ``off``) overrides the choice; ``-q`` turns progress off. The test
suite sets it to ``off`` (tests/conftest.py) so that stderr holds only what a test asserts on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, TextIO

#: Longest silence, in seconds, during a step in line mode
HEARTBEAT_S = 30.0
MODES = ("bar", "lines", "off")


def mode(enabled: bool = True, stream: TextIO | None = None) -> str:
    """The progress form here: "off" when not ``enabled``, else ``EDGESHIP_PROGRESS`` when set, else "bar" on a
    terminal and "lines" elsewhere."""
    if not enabled:
        return "off"
    forced = os.environ.get("EDGESHIP_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


class LineProgress:
    """Progress as log lines (module docstring): a line when a step ends (:meth:`update`) and a heartbeat line
    every ``heartbeat`` seconds while a step runs. ``set_postfix_str`` names the step running now."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "step", stream: TextIO | None = None, heartbeat: float = HEARTBEAT_S,
                 steps: bool = True) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.steps = total, desc, unit, steps
        self._closed = False
        self.stream = stream or sys.stderr
        self.n = 0
        self.step = ""  # what runs now (the heartbeat says it)
        self.name = ""  # the running step's name (its closing line says it)
        self.start = self.step_start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat,), daemon=True)
        self._beat.start()

    def _say(self, text: str) -> None:
        try:
            self.stream.write(f"edgeship: {self.desc}: {text}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe: progress is never worth failing the run for
            pass

    def _count(self) -> str:
        return f"{self.n}/{self.total}" if self.total else f"{self.n} {self.unit}"

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                now = time.monotonic()
                what = (f"'{self.step}'" if self.step else f"{self._count()} {self.unit}s done" if self.steps
                        else f"{self._count()} {self.unit}s")
                self._say(f"still working: {what} for {now - self.step_start:.0f} s "
                          f"({now - self.start:.0f} s so far)")

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """Name what runs now: the first name after a finished step names the step (its closing line), later
        ones (sub-steps) show in the heartbeat."""
        with self._lock:
            if not self.name:
                self.name = str(text)
            self.step = str(text)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if not self.steps:  # many small items (images): the heartbeat and the closing line say it
                return
            now = time.monotonic()
            what = f"{self.name} done" if self.name else f"{self._count()} {self.unit}s done"
            # "(step 5/5, ...)": the steps counted (calibration + files), not the files a summary counts
            count = (f" ({self.unit} {self._count()}" if self.total else f" ({self._count()}") if self.name else " ("
            self._say(f"{what} in {now - self.step_start:.1f} s{count}{', ' if self.name else ''}"
                      f"{now - self.start:.1f} s so far)")
            self.step, self.name, self.step_start = "", "", now

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if not self.steps and not self._closed and self.n:
                self._say(f"{self._count()} {self.unit}s done in {time.monotonic() - self.start:.1f} s")
            self._closed = True

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off:
    """No progress at all (``-q``, ``progress=False``, ``EDGESHIP_PROGRESS=off``), with the same interface."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self.iterable = iterable

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable or ())

    def __enter__(self) -> "_Off":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in the right number: "1 artifact", "2 artifacts", "0 variants"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "step",
             enabled: bool = True, comparable: bool = True, steps: bool = True, stream: TextIO | None = None) -> Any:
    """Progress over ``iterable`` (or ``total`` steps, advanced with ``update``): a tqdm bar, log lines or nothing
    (:func:`mode`). ``comparable``: the steps take about the same time, so a bar may show an ETA. ``steps=False``:
    many small items (images), which in line mode get the heartbeat and one closing line rather than a line each."""
    how = mode(enabled, stream)
    if how == "off":
        return _Off(iterable)
    if how == "lines":
        return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=stream, steps=steps)
    from tqdm import tqdm

    fmt = None if comparable else "{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}{postfix}]"
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream, bar_format=fmt)
