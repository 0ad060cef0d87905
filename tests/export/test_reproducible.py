"""Byte-identical reruns (edgeship.export.reproducible) and labels shipped byte for byte in every format.

The demo is exported twice — once in this process, once in a subprocess with another hash seed (tf2onnx's graph
passes walk str-keyed sets, so the hash seed is what changed the ONNX between runs) — with a label file saved as
Notepad does (BOM, CRLF) holding labels that str.splitlines would split. Every file, every file of the
.mlpackage bundles too, must hash the same; the validation reports must give the same figures (latency aside)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from edgeship.cli import main

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["zéro", "one\u2028line", "two\u2029", "three 3", "four", "five", "six", "seven", "eight", "nine 🙂"]


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    labels = tmp / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(LABELS).encode("utf-8") + b"\r\n")
    a, b = tmp / "a", tmp / "b"
    args = ["export", "--labels", str(labels)]
    # Two fresh processes with different hash seeds: the promise for a run of the CLI. (One long-lived process:
    # tests/export/test_reproducible_in_process.py.)
    procs = [subprocess.Popen([sys.executable, "-m", "edgeship.cli", *args, "--out", str(out)],
                              env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for out, seed in ((a, "1"), (b, "12345"))]
    try:
        errs = [p.communicate(timeout=1200)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-2000:]
    return a, b


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_exports_are_byte_identical(two_exports):
    a, b = two_exports
    ha, hb = _hashes(a), _hashes(b)
    assert {Path(f).suffix for f in ha} >= {".tflite", ".onnx", ".json", ".mlmodel", ".bin"}
    assert any(f.endswith(".mlpackage/Manifest.json") for f in ha)  # the package's own manifest too
    assert ha == hb, sorted(f for f in ha if ha.get(f) != hb.get(f))


def test_labels_are_shipped_byte_identical_in_every_format(two_exports):
    import onnx
    from coremltools.proto import Model_pb2

    from edgeship.metadata.coreml import classifier_labels
    from edgeship.metadata.tflite import read_metadata

    out, _ = two_exports
    want = [label.encode("utf-8") for label in LABELS]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [label.encode() for label in manifest["labels"]] == want

    tflite = (out / "edgeship_demo_fp32.tflite").read_bytes()
    assert [label.encode() for label in read_metadata(tflite)["labels"]] == want
    with zipfile.ZipFile(BytesIO(tflite)) as zf:  # the labels.txt a MediaPipe client reads, as bytes
        assert zf.read("labels.txt") == b"\n".join(want) + b"\n"

    props = {p.key: p.value for p in onnx.load(str(out / "edgeship_demo_fp32.onnx")).metadata_props}
    assert [label.encode() for label in json.loads(props["labels"])] == want

    spec = Model_pb2.Model()
    spec.ParseFromString((out / "edgeship_demo_fp16.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel")
                         .read_bytes())
    assert [label.encode() for label in classifier_labels(spec)] == want
    assert [label.encode() for label in json.loads(spec.description.metadata.userDefined["edgeship.labels"])] == want


def test_validation_figures_are_the_same(two_exports, tmp_path):
    """The same artifacts and data give the same report, latency (and when it was made) aside."""
    from edgeship.models.loading import DEMO_DIR
    from edgeship.data import load_image_folder

    a, b = two_exports
    heldout = load_image_folder(DEMO_DIR / "heldout", (96, 96))
    data = tmp_path / "few.npz"
    np.savez(data, images=heldout.images[::36], labels=heldout.labels[::36])  # 10 images, one per class
    reports = []
    for out in (a, b):
        code = main(["validate", "--artifacts", str(out), "--data", str(data), "--report", str(out / "report"),
                     "--iterations", "1", "--kernel-path-samples", "0"])
        assert code in (0, 1)
        reports.append(_figures(json.loads((out / "report" / "report.json").read_text())))
    assert reports[0] == reports[1]


def _figures(report: dict) -> dict:
    report = dict(report)
    for key in ("created", "machine"):
        report.pop(key, None)
    report["reference"] = {k: v for k, v in report["reference"].items() if k != "path"}
    report["artifacts"] = [{k: (Path(v).name if k == "path" else v) for k, v in art.items()
                            if k not in ("latency_ms", "peak_rss_bytes")} for art in report["artifacts"]]
    return report


def test_graph_doc_string_loses_tensorflows_process_counter():
    """tf2onnx writes the traced function's name, numbered by a process-wide counter, into the graph's doc_string:
    an export after other work in the same process differed from a fresh one (found by the full suite)."""
    import onnx

    from edgeship.export.reproducible import canonical_onnx

    graph = onnx.helper.make_graph([], "g", [], [], doc_string="converted from b'__inference_<lambda>_25831'")
    assert canonical_onnx(onnx.helper.make_model(graph)).graph.doc_string == "converted from b'__inference_<lambda>'"
