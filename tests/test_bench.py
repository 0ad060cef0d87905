"""scripts/bench.py --quick runs end to end: exit 0, every target in the JSON with a numeric value, a goal and a
boolean verdict, and a Markdown table on stdout marking each target MET or MISS (a miss is reported, not an error)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"onnx_int8_vs_tflite_int8", "int8_speedup_litert", "int8_speedup_ort", "pipeline_vs_bare",
           "harness_vs_bare_loop", "peak_rss", "demo_run_seconds"}


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    earlier = tmp_path / "earlier.json"  # an earlier run's figures (two of them; one the run will not have)
    earlier.write_text(json.dumps({"mode": "quick", "targets": [{"name": "demo_run_seconds", "value": 200.0}],
                                   "results": [{"name": "peak_rss", "value": 8.0, "unit": "GB"},
                                               {"name": "no_such_figure", "value": 1.0, "unit": "s"}]}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out),
                           "--baseline", str(earlier)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads(out.read_text())
    # --baseline: each figure both runs have, then and now, ratio now / then (a target matched as a target)
    compared = {(r["unit"].split()[0], r["name"]): r for r in data["baseline"]}
    assert set(compared) == {("target", "demo_run_seconds"), ("GB", "peak_rss")}, compared
    targets_now = {t["name"]: t["value"] for t in data["targets"]}
    row = compared[("target", "demo_run_seconds")]
    assert row["before"] == 200.0 and row["now"] == targets_now["demo_run_seconds"]
    assert math.isclose(row["ratio"], targets_now["demo_run_seconds"] / 200.0)
    assert math.isclose(compared[("GB", "peak_rss")]["ratio"], compared[("GB", "peak_rss")]["now"] / 8.0)
    assert re.search(r"^## Against the baseline \(2 figures", proc.stdout, re.M)
    targets = {t["name"]: t for t in data["targets"]}
    assert TARGETS <= set(targets), TARGETS - set(targets)
    for name in TARGETS:
        t = targets[name]
        assert isinstance(t["value"], (int, float)) and not isinstance(t["value"], bool), t
        assert math.isfinite(t["value"]), t
        assert isinstance(t["goal"], str) and re.fullmatch(r"(<=|>=) [0-9.]+", t["goal"]), t
        assert isinstance(t["met"], bool), t
        op, bound = t["goal"].split()
        assert t["met"] == (t["value"] <= float(bound) if op == "<=" else t["value"] >= float(bound)), t
    for r in data["results"]:
        assert {"name", "value", "unit", "min", "max"} <= set(r), r

    stdout = proc.stdout
    assert re.search(r"^\| target \| value \| goal \| result \|", stdout, re.M), stdout[-2000:]
    assert re.search(r"^\|---", stdout, re.M)
    for name, t in targets.items():
        if name in TARGETS:
            row = next(line for line in stdout.splitlines() if line.startswith(f"| {name} |"))
            assert ("MET" in row) if t["met"] else ("MISS" in row), row
    assert "MET" in stdout or "MISS" in stdout
    assert "[" in proc.stderr and "done" in proc.stderr  # progress lines went to stderr

    # The bench's demo run is `edgeship run` without a config (pipeline.run(RunConfig(out=...)) in a fresh process;
    # tests/validate/test_validate_cli.py checks the CLI hands it that config): the whole default pipeline on the
    # demo, checked here so the suite runs it once.
    work = Path(re.search(r"work dir (\S+)", proc.stderr).group(1))
    demo = work / "demo_run0" / "report"
    assert (demo / "report.html").exists() and (demo / "report.md").exists() and (demo / "junit.xml").exists()
    report = json.loads((demo / "report.json").read_text())
    rows = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert set(rows) == {("tflite", "fp32"), ("onnx", "fp32"), ("coreml", "fp16"),  # float, then quantised
                         ("tflite", "int8"), ("onnx", "int8"), ("coreml", "w8"), ("coreml", "w8a8")}
    assert all(a["status"] == "passed" for a in report["artifacts"]), report["artifacts"]  # Core ML by reference
    assert report["passed"] is True and report["data"]["count"] == 360
    assert rows[("coreml", "w8a8")]["layer_sqnr"]  # the per-layer report of the quantise stage, read back


def test_bench_refuses_a_baseline_of_the_other_mode_at_once(tmp_path):
    """A full run's figures against a --quick run (other models, other repeats) would mislead: exit 2 in one line,
    before any work (no work directory announced)."""
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"mode": "full", "targets": [], "results": []}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--baseline", str(full)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "compare like with like" in proc.stderr, proc.stderr[-2000:]
    assert "work dir" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
