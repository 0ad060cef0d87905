"""Fail fast (issue 23, item 4): a catalogue of mistakes that can be found without running a model, each run as a
fresh ``python -m edgeship`` process; prints how long each took to its one-line error, its exit code and the line.

    .venv/bin/python scripts/failfast.py [--json FILE]

Goal: every case's first error within 5 s on the 2-core reference machine (a benchmark, not a timed test: the
figures print; ``tests/test_bad_input_catalogue.py`` asserts the exit codes and the one line). The time includes
the interpreter's start and, for cases found after the model loads (data layouts, calibration), TensorFlow's
import and the demo's load: what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 5.0
DEMO = Path(__file__).resolve().parents[1] / "edgeship" / "demo"


def _cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(what the mistake is, CLI arguments) — files the cases name are written under ``tmp``."""
    (tmp / "bad-policy.toml").write_text("[gates.int8\nmin_sqnr_db = 20\n")
    (tmp / "policy-unknown-gate.toml").write_text("[int8]\nmin_snr = 20\n")
    mixed = tmp / "mixed"
    (mixed / "cat").mkdir(parents=True)
    for name in ("a.png", "cat/b.png"):
        (mixed / name).write_bytes((DEMO / "heldout" / "zero").glob("*.png").__next__().read_bytes())
    (tmp / "labels-bin.txt").write_bytes(b"\x00\x01\xff" * 10)
    (tmp / "baseline.json").write_text("{not json")
    release = tmp / "release"  # a file validate would judge (read later: these mistakes come first)
    release.mkdir()
    (release / "model.tflite").write_bytes(b"\0" * 64)
    configs = {
        "missing-policy": '[validate]\npolicy = "nope.toml"\n',
        "malformed-policy": '[validate]\npolicy = "bad-policy.toml"\n',
        "unknown-gate": '[validate]\npolicy = "policy-unknown-gate.toml"\n',
        "missing-data": '[validate]\ndata = "no-such-folder"\n',
        "mixed-layout": '[validate]\ndata = "mixed"\n',
        "missing-calibration": '[quantize]\ncalibration = "no-such-folder"\n',
        "broken-baseline": '[validate]\nbaseline = "baseline.json"\n',
        "missing-device-log": '[validate]\nlatency_from = ["pixel7.log"]\n',
        "binary-labels": '[model]\nlabels = "labels-bin.txt"\n',
        "0-1-units": "[model]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n",
        "format-typo": '[export]\nformats = ["tfite"]\n',
        "quantize-w8a8-tflite": '[quantize]\nformats = ["tflite"]\nprecisions = ["w8a8"]\n',
    }
    cases = []
    for name, text in configs.items():
        (tmp / f"{name}.toml").write_text(text)
        cases.append((f"run: {name}", ["run", str(tmp / f"{name}.toml"), "--out", str(tmp / "out" / name)]))
    cases += [
        ("export --precision int8", ["export", "--precision", "int8", "--out", str(tmp / "o1")]),
        ("quantize --formats tflite --precision w8a8",
         ["quantize", "--formats", "tflite", "--precision", "w8a8", "--out", str(tmp / "o2")]),
        ("export --model missing.keras", ["export", "--model", str(tmp / "missing.keras"), "--out", str(tmp / "o3")]),
        ("export --opset 99", ["export", "--opset", "99", "--out", str(tmp / "o4")]),
        ("export --out an existing file", ["export", "--out", str(tmp / "baseline.json")]),
        ("quantize --calibration missing", ["quantize", "--calibration", str(tmp / "nope"), "--out", str(tmp / "o5")]),
        ("validate a missing directory", ["validate", "--artifacts", str(tmp / "no-release")]),
        ("validate --policy malformed",
         ["validate", "--artifacts", str(release), "--policy", str(tmp / "bad-policy.toml")]),
        ("validate --data mixed layout", ["validate", "--artifacts", str(release / "model.tflite"), "--data", str(mixed)]),
        ("validate --data missing", ["validate", "--artifacts", str(release / "model.tflite"), "--data", str(tmp / "nope")]),
    ]
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    env = {**os.environ, "EDGESHIP_PROGRESS": "off", "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for what, argv in _cases(tmp):
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "edgeship", *argv], capture_output=True, text=True, env=env,
                               cwd=tmp, timeout=600)
            seconds = time.perf_counter() - t0
            lines = [x for x in p.stderr.splitlines() if x.strip()]
            rows.append({"case": what, "exit": p.returncode, "seconds": round(seconds, 2),
                         "stderr_lines": len(lines), "line": lines[-1] if lines else ""})
            print(f"{seconds:6.2f} s  exit {p.returncode}  {what}", file=sys.stderr)
    print(f"| case | exit | s | within {GOAL_S:g} s | error |\n|---|--:|--:|:-:|---|")
    for r in rows:
        ok = "yes" if r["seconds"] <= GOAL_S and r["exit"] in (2, 3) else "**no**"
        print(f"| {r['case']} | {r['exit']} | {r['seconds']:.2f} | {ok} | {r['line'][:140]} |")
    met = sum(r["seconds"] <= GOAL_S and r["exit"] in (2, 3) for r in rows)
    print(f"\n{met} of {len(rows)} cases fail with exit 2/3 within {GOAL_S:g} s; slowest "
          f"{max(r['seconds'] for r in rows):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"goal_s": GOAL_S, "cases": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
