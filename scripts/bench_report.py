"""The reporting half of scripts/bench.py: the book of results and targets (medians with min and max, each target
with its goal and verdict) and the number formats of its Markdown tables."""

from __future__ import annotations

import statistics
from typing import Any


class Book:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.targets: list[dict[str, Any]] = []
        self.md: list[str] = []

    def result(self, name: str, values: list[float] | float | None, unit: str) -> float | None:
        if values is None or (isinstance(values, list) and not values):
            self.results.append({"name": name, "value": None, "unit": unit, "min": None, "max": None})
            return None
        vals = values if isinstance(values, list) else [values]
        med = float(statistics.median(vals))
        self.results.append({"name": name, "value": med, "unit": unit, "min": float(min(vals)),
                             "max": float(max(vals))})
        return med

    def target(self, name: str, value: float | None, goal: str, note: str = "") -> None:
        op, bound = goal.split()
        met = value is not None and (value <= float(bound) if op == "<=" else value >= float(bound))
        self.targets.append({"name": name, "value": float("nan") if value is None else float(value), "goal": goal,
                             "met": bool(met), "note": note})

    def line(self, s: str = "") -> None:
        self.md.append(s)


def fmt_stats(vals: list[float], digits: int = 2) -> str:
    if not vals:
        return "n/a"
    return (f"{statistics.median(vals):.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})")


def med(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def r3(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
