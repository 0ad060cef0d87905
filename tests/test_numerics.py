"""Rates judged with their sample counts (issue 23, item 5): Wilson bounds and decided / undecided gates."""

from __future__ import annotations

import pytest

from edgeship.numerics import DEFAULT_CONFIDENCE, decide_rate, samples_needed, wilson_interval

def test_wilson_matches_published_values():
    # Brown, Cai & DasGupta (2001), and the textbook example: 8 / 10 at 95 % two-sided (z = 1.96) is [0.490, 0.943]
    lo, hi = wilson_interval(8, 10, confidence=0.975)
    assert lo == pytest.approx(0.4902, abs=5e-4) and hi == pytest.approx(0.9433, abs=5e-4)
    lo, hi = wilson_interval(0, 50, confidence=0.975)  # no successes: not degenerate, unlike the Wald interval
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)

def test_the_demo_decides_and_48_samples_do_not():
    """The measurements behind DEFAULT_CONFIDENCE: the demo's 360 held-out images decide the default rate gates,
    48 samples do not, and the release that failed on one near-tie in 48 images says how many would tell."""
    assert DEFAULT_CONFIDENCE == 0.90
    assert decide_rate(360, 360, 0.995).decided and decide_rate(360, 360, 0.99).decided
    assert decide_rate(359, 360, 0.99).decided  # the demo's w8a8 Core ML: one flip in 360
    for limit in (0.995, 0.99, 0.98):
        d = decide_rate(48, 48, limit)
        assert d.passed and not d.decided and d.needed is not None and d.needed > 48
    # a 0.995 gate at 360/360 is not decided at 95 %: the choice of 0.90 is what lets the demo decide
    assert not decide_rate(360, 360, 0.995, confidence=0.95).decided

def test_samples_needed_would_decide():
    d = decide_rate(48, 48, 0.99)
    n = d.needed
    assert decide_rate(n, n, 0.99).decided and not decide_rate(n - 1, n - 1, 0.99).decided
    assert samples_needed(0.99, 0.99) is None  # the observed rate on the limit: no count tells them apart
    assert samples_needed(0.9791667, 0.995) is not None

def test_lower_is_better_rates_and_exact_limits():
    assert decide_rate(0, 350, 0.01, higher_is_better=False).decided  # no confident flip in 350 confident answers
    assert not decide_rate(0, 40, 0.01, higher_is_better=False).decided
    assert not decide_rate(5, 100, 0.01, higher_is_better=False).passed
    d = decide_rate(20, 20, 1.0)  # an exactness gate (no miss at all): any count decides it
    assert d.passed and d.decided
    assert not decide_rate(19, 20, 1.0).passed and decide_rate(19, 20, 1.0).decided
    assert not decide_rate(0, 0, 0.99).passed and not decide_rate(0, 0, 0.99).decided  # no samples: nothing shown
