"""Units in the human-readable reports, in one place: agreements and accuracies are fractions in [0, 1] shown as
percentages ("99.7 %"); the accuracy drop in percentage points ("0.8 pp"); SQNR in dB with one decimal; latencies
in ms with two decimals; sizes in MB (10^6 bytes) with two decimals; anything not measured is "n/a".

A leaf module (no edgeship import), so the report writers and :mod:`edgeship.validate.baseline` both use it
without importing each other."""

from __future__ import annotations

import math
from typing import Any

NA = "n/a"


def _finite(x: Any) -> bool:
    """A finite number (Python or numpy scalar); False for None, non-finite values and non-numbers."""
    if x is None or isinstance(x, (str, bytes, bool)):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _nonfinite(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "NaN"
    return "inf" if x > 0 else "-inf"


def fmt_number(x: float | None, spec: str = ".3g") -> str:
    """A plain number: ``1.23e-05``, ``0.0123``; "NaN"/"inf" for non-finite; "n/a" for None."""
    if x is None:
        return NA
    if not _finite(x):
        return _nonfinite(x)
    return format(float(x), spec)


def fmt_pct(fraction: float | None) -> str:
    """A fraction in [0, 1] as a percentage with one decimal: ``0.997 -> "99.7 %"``.

    A value that is not exactly 0 or 1 never prints as "0.0 %" or "100.0 %" (one flip in 10,000 samples must
    not read as full agreement): up to four decimals are used to tell it apart."""
    if fraction is None:
        return NA
    if not _finite(fraction):
        return _nonfinite(fraction)
    pct = float(fraction) * 100.0
    if pct in (0.0, 100.0):
        return f"{pct:.1f} %"
    for decimals in (1, 2, 3, 4):
        text = f"{pct:.{decimals}f}"
        if float(text) not in (0.0, 100.0):
            return f"{text} %"
    return "> 99.9999 %" if pct > 50 else "< 0.0001 %"


def fmt_pp(fraction: float | None) -> str:
    """A difference of two fractions in percentage points with one decimal: ``0.008 -> "0.8 pp"``."""
    if fraction is None:
        return NA
    if not _finite(fraction):
        return _nonfinite(fraction)
    value = float(fraction) * 100.0
    text = f"{value:.1f}"
    return f"{'0.0' if text == '-0.0' else text} pp"


def fmt_db(x: float | None) -> str:
    """``42.34 -> "42.3 dB"``; an infinite SQNR (identical outputs) is "inf dB"."""
    if x is None:
        return NA
    return f"{_nonfinite(x) if not _finite(x) else format(float(x), '.1f')} dB"


def fmt_ms(x: float | None) -> str:
    """``1.2345 -> "1.23 ms"``."""
    if x is None:
        return NA
    return f"{_nonfinite(x) if not _finite(x) else format(float(x), '.2f')} ms"


def fmt_mb(n_bytes: int | float | None) -> str:
    """Bytes as MB (10^6 bytes) with two decimals: ``13_450_000 -> "13.45 MB"``."""
    if n_bytes is None:
        return NA
    if not _finite(n_bytes):
        return _nonfinite(n_bytes)
    return f"{float(n_bytes) / 1e6:.2f} MB"


def fmt_err(x: float | None) -> str:
    """An absolute error, three significant digits: ``1.2345e-05 -> "1.23e-05"``."""
    return fmt_number(x, ".3g")


def fmt_drop(drop: float | None) -> str:
    """An accuracy drop (reference minus artifact, a fraction) in points: ``0.008 -> "0.8 pp"``; a negative drop
    is a gain and says so: ``-0.05 -> "gain 5.0 pp"`` (never "-5.0 pp" under a "drop" heading)."""
    text = fmt_pp(drop)
    if drop is not None and _finite(drop) and drop < 0 and text != "0.0 pp":
        return f"gain {fmt_pp(-drop)}"
    return text


def fmt_accuracy(accuracy: float | None, drop: float | None) -> str:
    """``"91.2 % (drop 0.8 pp)"``, ``"93.0 % (gain 1.2 pp)"``; just the accuracy when the drop is unknown."""
    if accuracy is None and drop is None:
        return NA
    text = fmt_pct(accuracy)
    if drop is None:
        return text
    shown = fmt_drop(drop)
    return f"{text} ({shown})" if shown.startswith("gain") else f"{text} (drop {shown})"


def fmt_gate_value(x: float | None) -> str:
    return fmt_number(x, ".6g")
