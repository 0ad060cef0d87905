"""The numeric helpers every stage needs, below all of them: quantising real values as a client does, SQNR from
accumulated powers, top-1 agreement. The quantise stage (calibration, per-layer error, fallback) and the validate
stage (comparison) both use them; neither imports the other for them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quantize_values", "sqnr_from_powers", "top1_agreement"]


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
