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


def check_baseline(baseline: Any, mode: str) -> None:
    """ValueError unless ``baseline`` is a bench JSON object of ``mode`` ("quick" or "full")."""
    if not isinstance(baseline, dict) or "results" not in baseline:
        raise ValueError("not a bench.py --json file (no results)")
    if baseline.get("mode") != mode:
        raise ValueError(f"the baseline is a {baseline.get('mode')!r} run and this one {mode!r}: compare like with like")


def against_baseline(book: Book, baseline: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """Every target and result of this run that the baseline (an earlier ``bench.py --json`` file) also has, with
    its value then and now and the ratio now / then, written as a Markdown table into ``book``; the rows returned
    (``{"name", "unit", "before", "now", "ratio"}``) go into the JSON. A baseline of the other mode (``--quick``
    against a full run) measured other models and repeats: refused (ValueError), since its ratios would mislead.
    Figures are on whatever machine each run had: compare runs of one machine."""
    check_baseline(baseline, mode)
    # a target may share its name with a result (demo_run_seconds): each is matched within its own kind
    before = {("result", r["name"]): r.get("value") for r in baseline.get("results", [])}
    before.update({("target", t["name"]): t.get("value") for t in baseline.get("targets", [])})
    now = [("result", r["name"], r["value"], r["unit"]) for r in book.results]
    now += [("target", t["name"], t["value"], f"target ({t['goal']})") for t in book.targets]
    rows = []
    for kind, name, value, unit in now:
        then = before.get((kind, name))
        if not isinstance(then, (int, float)) or not isinstance(value, (int, float)) or then != then or value != value:
            continue
        rows.append({"name": name, "unit": unit, "before": float(then), "now": float(value),
                     "ratio": float(value) / float(then) if then else None})
    book.line()
    book.line(f"## Against the baseline ({len(rows)} figures in both runs; ratio = now / baseline)")
    book.line()
    book.line("| figure | unit | baseline | now | ratio |")
    book.line("|---|---|--:|--:|--:|")
    for r in rows:
        book.line(f"| {r['name']} | {r['unit']} | {r['before']:.3f} | {r['now']:.3f} | {r3(r['ratio'])} |")
    return rows
