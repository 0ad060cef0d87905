"""The numeric helpers every stage needs, below all of them: quantising real values as a client does, SQNR from
accumulated powers, top-1 agreement. The quantise stage (calibration, per-layer error, fallback) and the validate
stage (comparison) both use them; neither imports the other for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Decision", "decide_rate", "quantize_values", "samples_needed", "sqnr_from_powers", "top1_agreement",
           "wilson_interval"]


def quantize_values(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Real values to an 8-bit tensor's integers, as a client does: round half to even, saturate.

    ``x``: float array, any shape; ``dtype``: np.uint8 or np.int8; returns ``x``'s shape in ``dtype``."""
    bounds = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), bounds.min, bounds.max).astype(dtype)


def sqnr_from_powers(signal: float, noise: float) -> float:
    """10·log10(signal / noise) in dB from summed squares; inf for zero noise (identical outputs), -inf for a zero
    signal."""
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Fraction of rows of ``ref`` and ``out`` (N, classes) with the same argmax; None for no rows."""
    return float(np.mean(ref.argmax(1) == out.argmax(1))) if len(ref) else None


# ------------------------------------------------------------------------------------------ rates from counts
#: One-sided confidence with which a rate gate counts as decided (policy ``[statistics] confidence``), chosen by
#: the sample counts it must tell apart (Wilson bounds, decide_rate; the table is in tests/test_numerics.py):
#: at 0.90 the demo's 360 held-out images decide every default rate gate (360/360 against 0.995: lower bound
#: 99.55 %; 359/360 against 0.99: 99.08 %), while 48/48 decides none at 0.98 or above (lower bound 96.7 %); at 0.95
#: 360/360 leaves the 0.995 gate undecided (99.25 %), and 500+ images would be needed for the demo's gates.
DEFAULT_CONFIDENCE = 0.90


def _z(confidence: float) -> float:
    """The standard normal quantile of a one-sided ``confidence`` in (0.5, 1): math.erf inverted by bisection."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score bounds (lower, upper) of a rate ``successes / n``, each one-sided at ``confidence`` (so the
    pair is a two-sided interval at ``2 * confidence - 1``). Wilson (1927), "Probable inference, the law of
    succession, and statistical inference", JASA 22; recommended over the Wald and Clopper-Pearson intervals by
    Brown, Cai & DasGupta (2001), "Interval estimation for a binomial proportion", Statistical Science 16. Unlike
    the Wald interval it stays inside [0, 1] and is not degenerate at 0 or n successes. ``n`` = 0: (0, 1)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    z = _z(confidence)
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Decision:
    """Whether a rate gate's verdict is supported by its sample count. ``passed``: the observed rate meets the
    limit; ``decided``: the bound on the far side agrees (a pass: the lower bound meets the limit too; a fail: the
    upper bound misses it too); ``needed``: about how many samples at the observed rate would decide it (None when
    decided, or never: the observed rate equals the limit)."""

    passed: bool
    decided: bool
    lower: float
    upper: float
    needed: int | None


def decide_rate(successes: int, n: int, limit: float, higher_is_better: bool = True,
                confidence: float = DEFAULT_CONFIDENCE) -> Decision:
    """Judge ``successes / n`` against ``limit`` (a rate that must be >= limit, or <= limit for a lower-is-better
    rate such as confident flips) with Wilson bounds at ``confidence``. A limit of exactly 1 (or 0 for lower is
    better) asks for no miss at all: any sample count decides it."""
    lower, upper = wilson_interval(successes, n, confidence)
    rate = successes / n if n else float("nan")
    if higher_is_better:
        passed = n > 0 and rate >= limit
        exact = limit >= 1.0
        decided = n > 0 and (exact or (lower >= limit if passed else upper < limit))
    else:
        passed = n > 0 and rate <= limit
        exact = limit <= 0.0
        decided = n > 0 and (exact or (upper <= limit if passed else lower > limit))
    needed = None if decided or n == 0 else samples_needed(rate, limit, higher_is_better, confidence)
    return Decision(passed, decided, lower, upper, needed)


def samples_needed(rate: float, limit: float, higher_is_better: bool = True,
                   confidence: float = DEFAULT_CONFIDENCE, cap: int = 10_000_000) -> int | None:
    """The smallest sample count at which ``rate``, observed, would decide a gate at ``limit`` (Wilson bounds at
    ``confidence``); None when no count would (``rate == limit``) or more than ``cap`` would be needed."""
    if not math.isfinite(rate) or rate == limit:
        return None

    def decided(n: int) -> bool:
        k = round(rate * n)
        lower, upper = wilson_interval(k, n, confidence)
        above = rate > limit
        if higher_is_better:
            return lower >= limit if above else upper < limit
        return lower > limit if above else upper <= limit

    lo, hi = 1, 1
    while not decided(hi):
        hi *= 2
        if hi > cap:
            return None
    while lo < hi:  # the bound moves monotonically with n at a fixed rate (up to rounding of k)
        mid = (lo + hi) // 2
        if decided(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
