"""Latency and memory of one runner: the runtime's own speed, not the harness's.

Only the backend's inference call is timed (:meth:`Runner.time_runs`: the feed is built and bound once, then
``_run`` is timed alone), and warm-up runs are excluded. Peak memory is the process's resident high-water mark
while this artifact is timed: it is reset just before (Linux, ``/proc/self/clear_refs``), so earlier artifacts'
peaks do not leak into it, but what is resident (TensorFlow, the reference, other open runtimes) counts.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np

from edgeship.validate.results import Latency
from edgeship.runtimes.runner import Runner


def measure(runner: Runner, feed: dict[str, np.ndarray], warmup: int = 10,
            iterations: int = 100) -> tuple[Latency, list[float]]:
    """Latency summary and the raw per-inference times in ms."""
    times = [t * 1e3 for t in runner.time_runs(feed, warmup, iterations)]
    return summarise(times), times


def summarise(times_ms: list[float]) -> Latency:
    if not times_ms:
        return Latency()
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return Latency(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(t.mean()), std=float(t.std()))


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); elsewhere the peak stays process-wide."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
