"""A seeded, time-bounded fuzz test of the three artifact formats (issue 29, item 8): mutated copies of the demo's
TFLite, ONNX and Core ML files (bytes flipped, runs zeroed, the file cut short, for Core ML its spec or its weight
blob) are validated together with one untouched file. Whatever a mutant does to its runtime, the validation
finishes, writes the report, gives every mutant a status (failed ones with a one-line reason) and passes the
untouched file. The seed and the mutations are in the test id, so a failure reproduces."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgeship.validate.results import Status

pytestmark = pytest.mark.slow

SEED = int(__import__("os").environ.get("EDGESHIP_FUZZ_SEED", "20261207"))
MUTANTS_PER_FORMAT = 4
BUDGET_S = 240  # the whole validation of the mutants must finish within this, whatever they do


def _mutate(data: bytes, rng: np.random.Generator, kind: str) -> bytes:
    b = bytearray(data)
    n = len(b)
    if kind == "flip":  # 16 random bytes anywhere
        for i in rng.integers(0, n, 16):
            b[int(i)] ^= int(rng.integers(1, 256))
    elif kind == "zero":  # a run of 64 zero bytes
        at = int(rng.integers(0, max(1, n - 64)))
        b[at:at + 64] = bytes(min(64, n - at))
    elif kind == "cut":  # cut short
        b = b[: int(rng.integers(n // 8, n - 1))]
    elif kind == "head":  # the first bytes (headers, root offsets) changed
        for i in range(min(32, n)):
            if rng.random() < 0.3:
                b[i] = int(rng.integers(0, 256))
    return bytes(b)


KINDS = ("flip", "zero", "cut", "head")


def test_mutated_artifacts_fail_alone_and_the_report_is_written(demo_float_exports, tmp_path):
    from edgeship.validate import validate

    _, exported = demo_float_exports
    src = exported.out_dir
    rng = np.random.default_rng(SEED)
    mutants: dict[str, str] = {}
    work = tmp_path / "mutants"
    work.mkdir()
    for k in range(MUTANTS_PER_FORMAT):
        kind = KINDS[k % len(KINDS)]
        for name, suffix in (("edgeship_demo_fp32.tflite", "tflite"), ("edgeship_demo_fp32.onnx", "onnx")):
            out = work / f"m{k}_{kind}_fp32.{suffix}"
            out.write_bytes(_mutate((src / name).read_bytes(), rng, kind))
            mutants[out.name] = kind
        pkg = work / f"m{k}_{kind}_fp16.mlpackage"
        shutil.copytree(src / "edgeship_demo_fp16.mlpackage", pkg)
        parts = sorted(p for p in pkg.rglob("*") if p.is_file() and p.name in ("model.mlmodel", "weight.bin"))
        part = parts[k % len(parts)]
        part.write_bytes(_mutate(part.read_bytes(), rng, kind))
        mutants[pkg.name] = f"{kind} {part.name}"
    clean = shutil.copy(src / "edgeship_demo_fp32.tflite", work / "clean_fp32.tflite")

    policy = tmp_path / "limits.toml"
    policy.write_text("[limits]\ncall_seconds = 60\nmemory_mb = 4096\n")
    t = time.perf_counter()
    report = validate([*(work / n for n in mutants), clean], reference=None, policy=policy, iterations=1,
                      warmup=0, kernel_path_samples=0, progress=False, report_dir=tmp_path / "report")
    took = time.perf_counter() - t
    assert took < BUDGET_S, took
    rows = {Path(a.path).name: a for a in report.artifacts}
    assert set(rows) == set(mutants) | {"clean_fp32.tflite"}
    assert rows["clean_fp32.tflite"].status is Status.PASSED, rows["clean_fp32.tflite"].reason
    for name, how in mutants.items():
        a = rows[name]
        assert a.status in (Status.PASSED, Status.FAILED), (name, how, a.status, a.reason)
        if a.status is Status.FAILED:
            assert a.reason and "\n" not in a.reason and "Traceback" not in a.reason, (name, how, a.reason)
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(written["artifacts"]) == len(mutants) + 1
    failed = sum(rows[n].status is Status.FAILED for n in mutants)
    for name in sorted(mutants):
        print(name, rows[name].status, (rows[name].reason or "")[:150])
    print(f"fuzz seed {SEED}: {len(mutants)} mutants, {failed} failed, {len(mutants) - failed} passed, {took:.1f} s")
