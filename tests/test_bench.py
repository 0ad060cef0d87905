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
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads(out.read_text())
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
