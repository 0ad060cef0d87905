"""Gates with honest statistics: a gate on a share of samples carries its counts and Wilson bounds, a sample too small
to decide it is flagged (or fails, by policy), a larger sample decides it, and an observed miss never passes."""

from __future__ import annotations

import json
import shutil

import pytest

from edgeship.errors import UserError
from edgeship.models.loading import DEMO_DIR, load_model
from edgeship.validate.metrics import REGISTRY, Metric
from edgeship.validate.policy import load_policy
from edgeship.validate.reports import summary_table, to_html, to_json, to_junit, to_markdown
from edgeship.validate.pipeline import validate
from edgeship.validate.results import GateResult, Status

FAST = dict(iterations=2, warmup=1, progress=False, kernel_path_samples=0)


@pytest.fixture(scope="module")
def int8_tflite(demo_release):
    """The demo's int8 TFLite (the session's one quantised release, conftest.py)."""
    out, _ = demo_release
    (path,) = [p for p in out.rglob("*.tflite") if "int8" in p.name]
    return path


@pytest.fixture(scope="module")
def smoke_set(tmp_path_factory):
    """A 30-image smoke set: the first 3 held-out images of each of the demo's 10 classes."""
    root = tmp_path_factory.mktemp("smoke")
    for folder in sorted(p for p in (DEMO_DIR / "heldout").iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for f in sorted(folder.glob("*.png"))[:3]:
            shutil.copy(f, root / folder.name / f.name)
    return root


def _policy(tmp_path, text: str):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def _gate(a, name):
    return next(g for g in a.gates if g.name == name)


def test_counts_are_declared_for_shares_of_samples_only():
    counted = {m for m, spec in REGISTRY.items() if spec.counts is not None}
    assert counted == {Metric.TOP1_AGREEMENT, Metric.ACCURACY_TOP1, Metric.ACCURACY_TOP5, Metric.CONFIDENT_FLIPS,
                       Metric.KERNEL_PATH_TOP1_AGREEMENT, Metric.NEIGHBOUR_AGREEMENT}


def test_a_small_set_leaves_the_gate_undecided_and_a_larger_set_decides_it(int8_tflite, smoke_set, tmp_path):
    loaded = load_model()
    small = validate([int8_tflite], reference=loaded, data=smoke_set, **FAST)
    (a,) = small.artifacts
    gate = _gate(a, "top1_agreement")
    assert (gate.samples, a.count_of("top1_agreement")) == (30, (gate.successes, 30))
    assert gate.observed_pass and gate.undecided and gate.passed and gate.needed and gate.needed > 30
    assert a.status is Status.PASSED and small.exit_code == 0  # "warn": passes, flagged
    table, md = summary_table(small), to_markdown(small)
    assert f"({gate.successes}/30)" in table and f"({gate.successes}/30)" in md
    assert "warning: top1_agreement" in table and "undecided at 30 samples" in table
    assert "Warning: undecided gates" in md and "undecided at 30 samples" in md
    assert max(len(line) for line in table.splitlines()) <= 120
    assert 'class="badge undecided"' in to_html(small) and 'class="gate-undecided"' in to_html(small)
    d = json.loads(to_json(small))["artifacts"][0]
    jgate = next(g for g in d["gates"] if g["name"] == "top1_agreement")
    assert jgate["decided"] is False and jgate["samples"] == 30 and jgate["needed"] == gate.needed
    assert d["counts"]["top1_agreement"] == {"successes": gate.successes, "samples": 30}

    strict = _policy(tmp_path, '[statistics]\nundecided = "fail"\n')
    failed = validate([int8_tflite], reference=loaded, data=smoke_set, policy=strict, **FAST)
    (b,) = failed.artifacts
    assert b.status is Status.FAILED and failed.exit_code == 1 and not _gate(b, "top1_agreement").passed
    assert 'undecided = "fail"' in b.reason and "undecided at 30 samples" in b.reason
    table = summary_table(failed)
    assert table.count("top1_agreement") == 1  # the reason once, not twice

    # the demo's 360 held-out images decide the same gate under the same strict policy
    large = validate([int8_tflite], reference=loaded, policy=strict, **FAST)
    (c,) = large.artifacts
    decided = _gate(c, "top1_agreement")
    assert decided.samples == 360 and decided.decided and decided.passed and c.status is Status.PASSED
    assert "warning" not in summary_table(large) and f"({decided.successes}/360)" in summary_table(large)


def test_a_failing_gate_keeps_failing_when_undecided(int8_tflite, smoke_set, tmp_path):
    """A limit above what 30 samples can refute: the observed value misses it, the bounds cannot show it; it fails,
    and says it is undecided and how many samples would tell."""
    loaded = load_model()
    # accuracy on the 30 smoke images: a limit just above the observed share, so the miss is a near one
    probe = validate([int8_tflite], reference=loaded, data=smoke_set, **FAST)
    hits, n = probe.artifacts[0].count_of("accuracy_top1")
    limit = min(1.0, (hits + 0.5) / n)
    assert limit < 1.0, "every smoke image classified right: no near miss to plant"  # 98.3 % on the 360
    for undecided in ("warn", "fail"):
        path = _policy(tmp_path, f'[int8]\naccuracy_top1 = {limit}\n[statistics]\nundecided = "{undecided}"\n')
        report = validate([int8_tflite], reference=loaded, data=smoke_set, policy=path, **FAST)
        (a,) = report.artifacts
        gate = _gate(a, "accuracy_top1")
        assert not gate.observed_pass and not gate.passed and gate.undecided
        assert a.status is Status.FAILED and report.exit_code == 1
        assert f"({hits}/{n}) misses" in a.reason and "undecided at 30 samples" in a.reason
        junit = to_junit(report)
        assert junit.count(f"accuracy_top1 {gate.counts_text()}") == 1


def test_gates_describe_counts_and_uncertainty():
    from edgeship.numerics import decide_rate

    d = decide_rate(47, 48, 0.995, True, 0.9)
    miss = GateResult("top1_agreement", 47 / 48, 0.995, ">=", False, 47, 48, 0.9, d.lower, d.upper, d.decided,
                      d.needed)
    assert miss.describe() == "top1_agreement 97.9 % (47/48) misses >= 99.5 %"  # 99.4 % < 99.5 %: decided
    d = decide_rate(48, 48, 0.995, True, 0.9)
    flagged = GateResult("top1_agreement", 1.0, 0.995, ">=", True, 48, 48, 0.9, d.lower, d.upper, d.decided,
                         d.needed)
    assert flagged.describe() == ("top1_agreement 100.0 % (48/48) meets >= 99.5 %, undecided at 48 samples "
                                  f"(90 % bounds 96.7-100.0 %): about {d.needed} would tell 100.0 % from 99.5 %")
    assert set(GateResult("sqnr_db", 21.0, 20.0, ">=", True).to_dict()) == {"name", "value", "limit", "op", "passed"}


@pytest.mark.parametrize("text, match", [
    ("[statistics]\nconfidence = 1.0\n", r"\[statistics\] confidence"),
    ("[statistics]\nconfidence = 0.4\n", r"\[statistics\] confidence"),
    ('[statistics]\nconfidence = "high"\n', r"\[statistics\] confidence"),
    ('[statistics]\nundecided = "pass"\n', r"\[statistics\] undecided"),
    ("[statistics]\nalpha = 0.1\n", r"alpha"),
])
def test_bad_statistics_tables_are_one_line_errors(tmp_path, text, match):
    with pytest.raises(UserError, match=match) as e:
        load_policy(_policy(tmp_path, text))
    assert "\n" not in str(e.value)


def test_statistics_table_is_read_and_defaults_to_warn(tmp_path):
    assert (load_policy().confidence, load_policy().undecided) == (0.9, "warn")
    p = load_policy(_policy(tmp_path, '[statistics]\nconfidence = 0.95\nundecided = "fail"\n'))
    assert (p.confidence, p.undecided) == (0.95, "fail")
    p = load_policy(_policy(tmp_path, '[statistics]\nundecided = "fail"\n'))
    assert (p.confidence, p.undecided) == (0.9, "fail")
