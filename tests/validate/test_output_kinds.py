"""Task-aware comparison: the output kind is detected from the model (or its outputs), picks the metrics, and
each kind is gated by its own policy tables."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship._tf import keras
from edgeship.models.loading import detect_output_kind, load_model
from edgeship.models.spec import ModelSpec
from edgeship.types import OutputKind
from edgeship.validate import metrics as m
from edgeship.validate.compare import Comparison
from edgeship.validate.policy import load_policy
from edgeship.validate.reports.common import fmt_accuracy, fmt_drop
from edgeship.validate.results import Metrics


def _net(head: str):
    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(8, 3)(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    if head == "softmax":
        x = k.layers.Dense(5, activation="softmax")(x)
    elif head == "softmax_layer":
        x = k.layers.Softmax()(k.layers.Dense(5)(x))
    elif head == "sigmoid":
        x = k.layers.Dense(5, activation="sigmoid")(x)
    elif head == "logits":
        x = k.layers.Dropout(0.2)(k.layers.Dense(5)(x))
    elif head == "v3":  # MobileNetV3's head: a 1x1 conv, then Flatten (and a linear Activation)
        x = k.layers.Reshape((1, 1, 8))(x)
        x = k.layers.Activation("linear")(k.layers.Flatten()(k.layers.Conv2D(5, 1)(x)))
    elif head == "l2":
        x = k.layers.UnitNormalization()(k.layers.Dense(6)(x))
    return k.Model(inp, x)


@pytest.mark.parametrize("head,kind", [("softmax", "probabilities"), ("softmax_layer", "probabilities"),
                                       ("sigmoid", "multilabel"), ("logits", "logits"), ("v3", "logits"),
                                       ("l2", "embedding"), ("headless", "embedding")])
def test_kind_from_the_last_computing_layer(head, kind):
    assert detect_output_kind(_net(head))[0] is OutputKind(kind)


@pytest.mark.parametrize("head,kind", [("softmax", "probabilities"), ("sigmoid", "multilabel"), ("logits", "logits"),
                                       ("logits-unlabelled", "regression")])
def test_kind_of_a_savedmodel_from_its_outputs(tmp_path, head, kind):
    """An unlabelled linear output is ambiguous (class scores or coordinates): regression unless labels say (issue
    24)."""
    from tests.models.keras2_files import write_saved_model

    sm = write_saved_model(_net(head.split("-")[0]), tmp_path / "sm")
    if head != "logits-unlabelled":
        (sm / "labels.txt").write_text("".join(f"c{i}\n" for i in range(_net("softmax").output_shape[-1])))
    loaded = load_model(sm)
    assert loaded.spec.output_kind is OutputKind(kind)
    assert loaded.spec.output_name == OutputKind(kind).tensor_name


def test_spec_names_the_output_after_its_kind():
    spec = ModelSpec(name="x", input_shape=(8, 8, 3), num_classes=3, outputs_probabilities=True)
    assert spec.output_kind is OutputKind.PROBABILITIES and spec.output_name == "probabilities"
    emb = spec.with_output_kind("embedding")
    assert emb.output_name == "embedding" and not emb.outputs_probabilities
    assert emb.to_dict()["output_kind"] == "embedding"
    assert ModelSpec(name="x", input_shape=(8, 8, 3), num_classes=3).output_name == "logits"


def _ap_exact(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision * hits) / hits.sum())


def test_average_precision_histograms_add_and_merge():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, (300, 4))
    truth = rng.integers(0, 4, 300)
    scores[np.arange(300), truth] += 0.3  # informative but imperfect
    scores = np.clip(scores, 0, 1)
    whole = m.PrecisionHistogram(4, bins=100_000)
    whole.add(scores, truth)
    a, b = m.PrecisionHistogram(4, bins=100_000), m.PrecisionHistogram(4, bins=100_000)
    a.add(scores[:100], truth[:100])
    b.add(scores[100:], truth[100:])
    a.merge(b)
    exact = np.mean([_ap_exact(scores[:, c], truth == c) for c in range(4)])
    assert whole.mean_average_precision() == pytest.approx(exact, abs=1e-9)
    assert a.mean_average_precision() == pytest.approx(exact, abs=1e-9)
    assert 0.5 < exact < 1.0


def test_nearest_neighbour_agreement():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(50, 16))
    assert m.nearest_neighbour_agreement(e, e * 3.0) == 1.0  # scale does not change directions
    assert m.nearest_neighbour_agreement(e, rng.normal(size=(50, 16))) < 0.3
    assert m.nearest_neighbour_agreement(e[:1], e[:1]) is None


def test_comparison_by_kind():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, (40, 3))
    out = ref.copy()
    out[:4, 0] = np.where(ref[:4, 0] >= 0.5, 0.1, 0.9)  # 4 of 120 decisions flipped
    c = Comparison(["a", "b", "c"], kind=OutputKind.MULTILABEL, threshold=0.5)
    c.update(ref[:20], out[:20], np.zeros((20, 4, 4, 3), np.uint8), rng.integers(0, 3, 20), [""] * 20, 0)
    c.update(ref[20:], out[20:], np.zeros((20, 4, 4, 3), np.uint8), rng.integers(0, 3, 20), [""] * 20, 20)
    r = c.metrics()
    assert r.label_agreement == pytest.approx(116 / 120)
    assert r.top1_agreement is None and r.accuracy_top1 is None and r.mean_average_precision is not None

    emb = rng.normal(size=(30, 8))
    c = Comparison([str(i) for i in range(8)], kind=OutputKind.EMBEDDING)
    c.update(emb, emb + rng.normal(scale=1e-3, size=emb.shape), np.zeros((30, 4, 4, 3), np.uint8), None, [""] * 30, 0)
    r = c.metrics()
    assert r.top1_agreement is None and r.neighbour_agreement == 1.0
    assert 0.999 < r.cosine_min <= r.cosine <= 1.0


def test_policy_gates_each_kind_by_its_own_table(tmp_path):
    policy = load_policy()
    emb = policy.limits_for("onnx", "int8", "embedding")
    assert "top1_agreement" not in {str(k) for k in emb} and "neighbour_agreement" in {str(k) for k in emb}
    assert "label_agreement" in {str(k) for k in policy.limits_for("tflite", "fp32", "multilabel")}
    assert "top1_agreement" in {str(k) for k in policy.limits_for("tflite", "int8", "probabilities")}
    gates = policy.gate_metrics("onnx", "int8", Metrics(cosine=0.5, neighbour_agreement=1.0, top1_agreement=0.0),
                                "embedding")
    assert [g.name for g in gates if not g.passed] == ["cosine"]
    user = tmp_path / "p.toml"
    user.write_text("[multilabel]\nthreshold = 0.3\n[embedding.int8]\ncosine = 0.9\n")
    mine = load_policy(user)
    assert mine.label_threshold == 0.3 and mine.limits_for("onnx", "int8", "embedding")[m.Metric.COSINE] == 0.9
    from edgeship.fileio import sha256_path

    # a report names the policy that decided it: the user's file (and its hash), or the shipped one alone
    assert mine.describe() == {"path": str(user), "sha256": sha256_path(user)}
    assert policy.describe()["shipped"] is True and policy.describe()["path"].endswith("policy.toml (shipped)")


def test_a_negative_drop_is_a_gain():
    assert fmt_drop(-0.05) == "gain 5.0 pp" and fmt_drop(0.008) == "0.8 pp" and fmt_drop(-0.0001) == "0.0 pp"
    assert fmt_accuracy(0.93, -0.05) == "93.0 % (gain 5.0 pp)"
    assert fmt_accuracy(0.90, 0.01) == "90.0 % (drop 1.0 pp)"


def test_output_kind_in_the_config_and_the_cli(tmp_path):
    from edgeship.cli import build_parser
    from edgeship.errors import UserError
    from edgeship.pipeline import load_config

    cfg = tmp_path / "edgeship.toml"
    cfg.write_text('[model]\noutput_kind = "Embedding"\n')
    assert load_config(cfg).output_kind == "embedding"
    cfg.write_text('[model]\noutput_kind = "boxes"\n')
    with pytest.raises(UserError, match="output_kind"):
        load_config(cfg)
    for cmd in (["export"], ["quantize"], ["validate", "--artifacts", "x.tflite"]):
        args = build_parser().parse_args([*cmd, "--output-kind", "multilabel"])
        assert args.output_kind == "multilabel"


@pytest.mark.parametrize("kind", list(OutputKind))
def test_a_comparison_measures_exactly_its_kinds_registered_metrics(kind):
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, (12, 4))
    out = ref + rng.normal(scale=0.05, size=ref.shape)
    c = Comparison(list("abcd"), kind=kind, probabilities=kind is OutputKind.PROBABILITIES, confident_margin=0.01)
    second = Comparison(list("abcd"), kind=kind, record_flips=False)
    for comp in (c, second):
        comp.update(ref, out, np.zeros((12, 4, 4, 3), np.uint8), rng.integers(0, 4, 12), [""] * 12, 0)
    r = c.metrics(second)
    measured = {name for name, value in vars(r).items() if value is not None}
    assert measured == {str(x) for x in m.metrics_of(kind)} | {str(x) for x in m.metrics_of(kind, kernel_path=True)}
