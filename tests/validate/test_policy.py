from __future__ import annotations

import pytest

from edgeship.errors import UserError
from edgeship.validate.policy import load_policy
from edgeship.validate.results import Latency, Metrics


def test_shipped_defaults():
    p = load_policy()
    assert {m.value: v for m, v in p.limits_for("tflite", "fp32").items()} == {"max_abs_error": 1e-4,
                                                                               "top1_agreement": 1.0}
    assert {m.value: v for m, v in p.limits_for("onnx", "fp16").items()} == {"top1_agreement": 0.995}
    assert {m.value: v for m, v in p.limits_for("coreml", "int8").items()} == {
        "top1_agreement": 0.99, "sqnr_db": 20.0, "accuracy_top1_drop": 0.01, "kernel_path_sqnr_db": 12.0,
        "confident_flips": 0.01}


def test_gates_pass_and_fail_in_the_right_direction():
    p = load_policy()
    ok = Metrics(top1_agreement=0.995, sqnr_db=30.0, accuracy_top1_drop=0.005)
    assert all(g.passed for g in p.gate_metrics("tflite", "int8", ok))
    bad = Metrics(top1_agreement=0.98, sqnr_db=15.0, accuracy_top1_drop=0.02)
    gates = p.gate_metrics("tflite", "int8", bad)
    assert [g.passed for g in gates] == [False, False, False]
    assert gates[0].describe() == "top1_agreement 0.98 misses >= 0.99"
    # accuracy without labels: no gate, not a pass by default
    assert [g.name for g in p.gate_metrics("tflite", "int8", Metrics(top1_agreement=1.0, sqnr_db=40.0))] == [
        "top1_agreement", "sqnr_db"]


def test_user_file_overrides_defaults_and_adds_latency(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[int8]\nsqnr_db = 30\n[onnx.int8]\ntop1_agreement = 0.999\n"
                 "[latency.tflite.int8]\np50_ms = 2.0\n[latency.onnx.int8]\np50_ratio = { to = \"tflite.int8\", max = 1.1 }\n")
    p = load_policy(f)
    assert {m.value: v for m, v in p.limits_for("onnx", "int8").items()} == {
        "top1_agreement": 0.999, "sqnr_db": 30.0, "accuracy_top1_drop": 0.01, "kernel_path_sqnr_db": 12.0,
        "confident_flips": 0.01}
    assert p.limits_for("tflite", "int8")[next(m for m in p.limits_for("tflite", "int8") if m.value == "top1_agreement")] == 0.99
    (g,) = p.gate_latency("tflite.int8", Latency(p50=2.5), {})
    assert g.name == "latency_p50_ms" and not g.passed
    (g,) = p.gate_latency("onnx.int8", Latency(p50=2.1), {"tflite.int8": 2.0})
    assert g.value == pytest.approx(1.05) and g.passed


@pytest.mark.parametrize("text,needle", [
    ("[fp32]\nagreement = 1\n", r"\[fp32\] has unknown keys \['agreement'\]"),
    ("[fp64]\ntop1_agreement = 1\n", "unknown table"),
    ("[tflite.int4]\ntop1_agreement = 1\n", r"\[tflite\] has unknown keys \['int4'\]"),
    ("[fp32]\ntop1_agreement = 'high'\n", "valid number"),
    ("[latency.tflite.int8]\np42_ms = 1\n", r"unknown keys \['p42_ms'\]"),
    ("[fp32\n", "cannot read policy"),
])
def test_bad_policies_are_one_clear_error(tmp_path, text, needle):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_policy(f)


@pytest.mark.parametrize("text,needle", [
    ("[embedding.int8]\naccuracy_top1 = 0.9\n",
     r"\[embedding.int8\] accuracy_top1 is never measured for embedding outputs \(only for probabilities, logits\)"),
    ("[fp32]\nneighbour_agreement = 0.9\n", r"\[fp32\] neighbour_agreement is never measured for logits or "),
    ("[multilabel.int8]\ntop1_agreement = 0.9\n", r"\[multilabel.int8\] top1_agreement is never measured"),
    ("[fp32]\nkernel_path_sqnr_db = 12\n", r"\[fp32\] kernel_path_sqnr_db is measured on a second kernel path"),
    ("[coreml.int8]\nkernel_path_sqnr_db = 12\n", r"\[coreml.int8\] kernel_path_sqnr_db is measured on a second"),
    ("[int8]\ntop1_accuracy = 0.9\n", r"\[int8\] has unknown keys \['top1_accuracy'\]"),
])
def test_a_gate_that_can_never_be_measured_is_refused(tmp_path, text, needle):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=needle) as e:
        load_policy(f)
    assert "\n" not in str(e.value)


def test_gates_that_can_be_measured_somewhere_are_kept(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[tflite.int8]\nneighbour_agreement = 0.9\nkernel_path_top1_agreement = 0.9\n"
                 "[embedding.fp32]\ncosine = 0.99\n")
    p = load_policy(f)
    assert {m.value for m in p.limits_for("tflite", "int8", "embedding")} >= {"neighbour_agreement", "cosine"}


def test_the_registry_declares_every_metric_once_and_drives_the_report_fields(monkeypatch):
    from dataclasses import fields

    from edgeship.validate import metrics as m

    assert [f.name for f in fields(Metrics)] == [str(x) for x in m.Metric] == [str(x) for x in m.REGISTRY]
    half = dict(m.REGISTRY)
    del half[m.Metric.COSINE_MIN]
    monkeypatch.setattr(m, "REGISTRY", half)
    with pytest.raises(RuntimeError, match="no declaration for \\['cosine_min'\\]"):
        m._check_registry()
