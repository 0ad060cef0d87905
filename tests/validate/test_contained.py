"""Containment (issue 29, item 2): each artifact's runtime runs in a process of its own, so a hostile file fails
alone, naming the cause, while the healthy files are still validated and the report is written. The hostile files
are made here: an ONNX memory bomb (an 8 GiB ConstantOfShape) under ``[limits] memory_mb``, a TFLite whose metadata
flatbuffer points past its end (its reader raises struct.error: exit 4 and no report before), an ONNX that never
returns (a Loop of 10^12 trips) under ``[limits] call_seconds``, and a runtime process killed by SIGKILL as the
kernel's OOM killer would (the fault hook of edgeship.validate.contained). And the figures of a healthy release
are the same contained or in process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeship.validate.contained import FAULT_ENV
from edgeship.validate.results import Status

pytestmark = pytest.mark.slow


def _classifier_with(extra_nodes, extra_inits, scalar: str, opset: int = 17) -> onnx.ModelProto:
    """A (N, 96, 96, 3) float -> (N, 10) softmax ONNX whose output also adds 0 x ``scalar`` (a value the extra
    nodes compute), so the runtime must compute it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 1e-3, (96 * 96 * 3, 10)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [*extra_nodes,
             helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
             helper.make_node("Mul", [scalar, "zero"], ["nothing"]),
             helper.make_node("Add", ["logits0", "nothing"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 96, 96, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
                              [w, zero, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def memory_bomb(path: Path) -> Path:
    shape = numpy_helper.from_array(np.array([2**31], np.int64), "bomb_shape")
    nodes = [helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=0)]
    onnx.save(_classifier_with(nodes, [shape], "bomb_sum"), path)
    return path


def endless(path: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.ones((), np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(10**12, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "true"),
             numpy_helper.from_array(np.zeros((), np.float32), "v0")]
    nodes = [helper.make_node("Loop", ["trips", "true", "v0"], ["v_end"], body=body)]
    onnx.save(_classifier_with(nodes, inits, "v_end"), path)
    return path


def bad_metadata(fp32_tflite: Path, path: Path) -> Path:
    data = bytearray(fp32_tflite.read_bytes())
    at = data.find(b"M001")  # the metadata flatbuffer's identifier: a table offset after it now points past its end
    assert at > 0
    data[at + 12: at + 16] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def release(demo_float_exports, tmp_path_factory):
    """The demo's five float files (TFLite fp32/fp16, ONNX fp32, Core ML fp32/fp16, with their manifest) and, in
    a folder of their own, four hostile files."""
    _, exported = demo_float_exports
    root = tmp_path_factory.mktemp("contained")
    good = root / "good"
    shutil.copytree(exported.out_dir, good)
    bad = root / "bad"
    bad.mkdir()
    hostile = [memory_bomb(bad / "bomb_fp32.onnx"), bad_metadata(good / "edgeship_demo_fp32.tflite",
                                                                   bad / "metadata_fp32.tflite"),
               endless(bad / "endless_fp32.onnx"), shutil.copy(good / "edgeship_demo_fp32.onnx",
                                                               bad / "killed_fp32.onnx")]
    return good, [Path(p) for p in hostile]


def test_hostile_files_fail_alone_and_the_report_is_written(release, tmp_path, monkeypatch):
    from edgeship.validate import validate

    good, hostile = release
    policy = tmp_path / "limits.toml"
    policy.write_text("[limits]\ncall_seconds = 30\nmemory_mb = 3072\n")
    monkeypatch.setenv(FAULT_ENV, "killed_fp32.onnx")  # that file's runtime process is SIGKILLed on its first batch
    report = validate([good, *hostile], policy=policy, iterations=2, warmup=1, kernel_path_samples=0,
                      progress=False, report_dir=tmp_path / "report")
    rows = {Path(a.path).name: a for a in report.artifacts}
    assert len(rows) == 9
    healthy = [n for n in rows if n.startswith("edgeship_demo")]
    assert len(healthy) == 5
    for name in healthy:
        assert rows[name].status is Status.PASSED, (name, rows[name].reason)
        assert rows[name].latency_ms.p50 is not None and rows[name].peak_rss_bytes  # timed in its own process
    why = {n: rows[n].reason or "" for n in ("bomb_fp32.onnx", "metadata_fp32.tflite", "endless_fp32.onnx",
                                             "killed_fp32.onnx")}
    assert all(rows[n].status is Status.FAILED for n in why), why
    assert "memory" in why["bomb_fp32.onnx"].lower() or "alloc" in why["bomb_fp32.onnx"].lower(), why
    assert "error" in why["metadata_fp32.tflite"] and "could not open it" in why["metadata_fp32.tflite"], why
    assert "did not answer within 30 s" in why["endless_fp32.onnx"], why
    assert "killed by SIGKILL" in why["killed_fp32.onnx"], why
    assert report.passed is False
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [a["status"] for a in written["artifacts"]].count("passed") == 5


def test_a_healthy_release_has_the_same_figures_contained_or_in_process(release):
    from edgeship.validate import validate

    good, _ = release
    runs = [validate([good], iterations=2, warmup=1, kernel_path_samples=0, progress=False, contain=contain)
            for contain in (True, False)]
    contained, in_process = ({a.path: a for a in r.artifacts} for r in runs)
    assert contained.keys() == in_process.keys()
    for path, a in contained.items():
        b = in_process[path]
        assert (a.status, a.metrics, a.counts, a.flips, a.input_feed) == (b.status, b.metrics, b.counts, b.flips,
                                                                          b.input_feed), path
    # the artifact's own process: its runtime and model, not TensorFlow and the reference
    assert all(a.peak_rss_bytes < b.peak_rss_bytes for a, b in ((contained[p], in_process[p]) for p in contained))
