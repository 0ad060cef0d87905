"""Latency measured on a real device, read from a LiteRT ``benchmark_model`` log (``--latency-from FILE``).

edgeship cannot reach a phone; a CI job that can runs LiteRT's ``benchmark_model`` on it (over ``adb``, or on a
device farm: ``docs/devices.md``) and hands the captured output to ``edgeship validate --latency-from LOG
--device NAME``. The figures join the report beside the host's, per artifact, with the device's name, and the
policy's ``[device_latency.FORMAT.PRECISION]`` budgets gate them like host latency.

The log format, from the tool's source (google-ai-edge/LiteRT at commit 7d88950ea445f5b671d18e64f9614aff397fde50;
the same code lives in tensorflow/tensorflow under ``tensorflow/lite/tools/``):

- ``tflite/tools/logging.h``: every ``TFLITE_LOG(INFO)`` line is printed to stdout as ``"INFO: " + message`` (and
  to logcat with the tag ``tflite`` on Android, where logcat adds its own prefix). Lines are matched anywhere in
  the line, so both forms parse.
- ``tflite/tools/tool_params.h`` ``LOG_TOOL_PARAM``: parameters as ``"<description>: [<value>]"``, booleans as
  ``0``/``1``. ``tflite/tools/benchmark/benchmark_tflite_model.cc`` ``LogParams`` always logs ``Graph: [path]``;
  ``benchmark_model.cc`` logs ``Num threads: [N]`` when set; the delegate providers log ``Use xnnpack: [1]``,
  ``Use gpu: [1]``, ``Use NNAPI: [1]`` when set (``tflite/tools/delegates/*_delegate_provider.cc``).
- ``tflite/tools/benchmark/benchmark_model.cc`` ``Run()``: ``The input model file size (MB): 3.57`` and
  ``Initialized session in 123.45ms.``; then each run loop (warm-up, then the timed runs) logs its
  ``StatWithPercentiles<int64_t>`` of per-run microseconds, whose ``OutputToStream`` (``xla/tsl/util/
  stats_calculator.h``) writes ``count=50 first=4242 curr=4101 min=4003 max=4622 avg=4150.3 std=98 p5=4021
  median=4133 p95=4380``; with all runs equal ``count=50 curr=4101(all same)`` (then the percentiles); older
  builds (``Stat``, tensorflow/tensorflow's ``benchmark_model.cc`` at 08df8c40b4376ed012fa3ba03ff3e3068d8d2a94)
  write no ``p5``/``median``/``p95``.
- ``BenchmarkLoggingListener::OnBenchmarkEnd`` (same file): ``Inference timings in us: Init: 123456, First
  inference: 5432, Warmup (avg): 4300.5, Inference (avg): 4150.3``, then, where memory can be read, ``Memory
  footprint delta from the start of the tool (MB): init=3.2 overall=9.8`` and ``Overall peak memory footprint
  (MB) via periodic monitoring: 12.1``.

The timed run loop's statistics line is the last ``count=`` line before ``Inference timings`` (its ``avg`` must
agree with ``Inference (avg)``, else only the summary line's figures are kept). ``p50`` is the log's ``median``
(``values[n * 50 / 100]`` after ``nth_element``: the upper median), absent in old builds, so a ``p50_ms`` budget
is then not applied; gate ``mean_ms`` instead. All times are turned into milliseconds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

from edgeship.errors import UserError
from edgeship.validate.results import DeviceLatency

SOURCE = ("google-ai-edge/LiteRT@7d88950ea445f5b671d18e64f9614aff397fde50: tflite/tools/benchmark/benchmark_model.cc, "
          "benchmark_tflite_model.cc, tflite/tools/logging.h, tool_params.h; xla/tsl/util/stats_calculator.h")

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_TIMINGS = re.compile(r"Inference timings in us:\s*Init:\s*(?P<init>{n}),\s*First inference:\s*(?P<first>{n}),\s*"
                      r"Warmup \(avg\):\s*(?P<warmup>{n}),\s*Inference \(avg\):\s*(?P<avg>{n})".format(n=_NUM))
_STAT = re.compile(r"\bcount=(?P<count>\d+)(?P<rest>.*)$")
_FIELD = re.compile(r"\b(first|curr|min|max|avg|std|p5|median|p95)=({n})".format(n=_NUM))
_ALL_SAME = re.compile(r"\bcurr=({n})\(all same\)".format(n=_NUM))
_PARAM = re.compile(r"(?P<name>Graph|Num threads|Use xnnpack|Use gpu|Use NNAPI|Use Hexagon|Use CoreML): "
                    r"\[(?P<v>[^\]]*)\]")
_SIZE = re.compile(r"The input model file size \(MB\):\s*({n})".format(n=_NUM))
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*({n})".format(n=_NUM))
_XNNPACK_CREATED = re.compile(r"Created TensorFlow Lite XNNPACK delegate", re.I)

# Which delegate ran the graph: the first ``Use ...: [1]`` found, in this order (GPU and NNAPI take the graph
# from XNNPACK); without any, LiteRT applies XNNPACK by default when it logs its creation, else the builtin kernels.
_DELEGATES = (("Use gpu", "gpu"), ("Use NNAPI", "nnapi"), ("Use Hexagon", "hexagon"), ("Use CoreML", "coreml"),
              ("Use xnnpack", "xnnpack"))


def parse_benchmark_log(text: str, device: str, source: str = "") -> DeviceLatency:
    """One ``benchmark_model`` run's output -> :class:`DeviceLatency` (milliseconds).

    Raises :class:`UserError` when the log holds no ``Inference timings in us`` line (the run failed or the file
    is not a benchmark_model log) or when it holds several (one run per file: split the log)."""
    lines = text.splitlines()
    where = source or "the benchmark log"
    ends = [i for i, line in enumerate(lines) if _TIMINGS.search(line)]
    if not ends:
        raise UserError(f"{where}: no 'Inference timings in us: ...' line: not a finished LiteRT benchmark_model run; "
                        "pass the tool's full output (stdout) of a run that completed")
    if len(ends) > 1:
        raise UserError(f"{where}: {len(ends)} benchmark_model runs in one file; give each run its own file")
    end = ends[0]
    timings = _TIMINGS.search(lines[end])
    assert timings is not None
    stats = [i for i in range(end) if _STAT.search(lines[i])]
    fields: dict[str, float] = {}
    count = None
    if stats:
        m = _STAT.search(lines[stats[-1]])
        assert m is not None
        count = int(m["count"])
        fields = {k: float(v) for k, v in _FIELD.findall(m["rest"])}
        same = _ALL_SAME.search(m["rest"])
        if same or (count == 1 and "curr" in fields):  # every run took the same time: count=N curr=X(all same)
            value = float(same[1]) if same else fields["curr"]
            fields.update(min=value, max=value, avg=value, std=0.0)
    params: dict[str, str] = {}
    for line in lines[:end]:
        for p in _PARAM.finditer(line):
            params.setdefault(p["name"], p["v"].strip())
    delegate = next((name for key, name in _DELEGATES if params.get(key) == "1"), None)
    if delegate is None:
        delegate = "xnnpack" if any(_XNNPACK_CREATED.search(line) for line in lines[:end]) else "cpu"
    threads = params.get("Num threads")
    size = next((float(m[1]) for line in lines if (m := _SIZE.search(line))), None)
    peak = next((float(m[1]) for line in lines if (m := _PEAK.search(line))), None)

    def ms(us: float | None) -> float | None:
        return None if us is None or not math.isfinite(us) else us / 1e3

    avg_us = float(timings["avg"])
    if "avg" in fields and not math.isclose(fields["avg"], avg_us, rel_tol=1e-3, abs_tol=1.0):
        count, fields = None, {}  # the last stat line is not the timed loop's: keep only the summary's figures
    return DeviceLatency(
        device=device, source=source, graph=params.get("Graph") or None, delegate=delegate,
        threads=int(threads) if threads and threads.lstrip("-").isdigit() and int(threads) > 0 else None,
        runs=count, init_ms=ms(float(timings["init"])), first_ms=ms(float(timings["first"])),
        warmup_mean_ms=ms(float(timings["warmup"])), mean_ms=ms(avg_us), std_ms=ms(fields.get("std")),
        min_ms=ms(fields.get("min")), max_ms=ms(fields.get("max")), p5_ms=ms(fields.get("p5")),
        p50_ms=ms(fields.get("median")), p95_ms=ms(fields.get("p95")), model_size_mb=size, peak_memory_mb=peak)


def read_benchmark_logs(paths: Sequence[str | Path], device: str | None) -> list[DeviceLatency]:
    """Each file parsed (:func:`parse_benchmark_log`); ``device`` names the phone (default "device")."""
    out = []
    for raw in paths:
        p = Path(raw)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise UserError(f"--latency-from {p}: file not found; pass the saved output of benchmark_model") from None
        except OSError as e:
            raise UserError(f"--latency-from {p}: cannot read it: {e.strerror or e}") from None
        out.append(parse_benchmark_log(text, device or "device", str(p)))
    return out


def match_artifact(entry: DeviceLatency, names: Sequence[tuple[str, str, str]]) -> int:
    """The index in ``names`` ((file name, format, precision) per artifact) of the artifact ``entry`` measured:
    the one whose file name is the log's ``Graph`` file name (benchmark_model runs ``.tflite`` files). Raises
    :class:`UserError` when none or several match."""
    graph = Path((entry.graph or "").replace("\\", "/")).name
    hits = [i for i, (name, fmt, _) in enumerate(names) if fmt == "tflite" and name == graph]
    if len(hits) == 1:
        return hits[0]
    tflites = ", ".join(n for n, f, _ in names if f == "tflite") or "none"
    if not graph:
        raise UserError(f"--latency-from {entry.source}: the log names no graph ('Graph: [...]' line): pass the "
                        "complete benchmark_model output")
    what = "several artifacts" if hits else "no artifact"
    raise UserError(f"--latency-from {entry.source}: its graph {graph} matches {what} being validated (TFLite files: "
                    f"{tflites}); benchmark the file under the name it has here")
