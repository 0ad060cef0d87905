"""Release gates as data: a TOML policy (shipped defaults in ``policy.toml`` beside this module; users override
any of it with ``--policy FILE``), evaluated against an artifact's metrics and latency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.errors import UserError
from edgeship.fileio import read_structured
from edgeship.types import Format, Precision
from edgeship.validate.metrics import HIGHER_IS_BETTER, Metric
from edgeship.validate.results import GateResult, Latency, Metrics

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
_LATENCY_KEYS = {"p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99", "mean_ms": "mean"}


@dataclass
class Policy:
    metric_limits: dict[str, dict[str, float]] = field(default_factory=dict)  # "fp32" or "tflite.fp32" -> limits
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # "tflite.int8" -> budgets
    source: str = str(DEFAULT_POLICY)

    def limits_for(self, fmt: str, precision: str) -> dict[Metric, float]:
        merged = {**self.metric_limits.get(precision, {}), **self.metric_limits.get(f"{fmt}.{precision}", {})}
        return {Metric(k): float(v) for k, v in merged.items()}

    def gate_metrics(self, fmt: str, precision: str, metrics: Metrics) -> list[GateResult]:
        gates = []
        for metric, limit in self.limits_for(fmt, precision).items():
            value = getattr(metrics, metric.value)
            if value is None:
                continue  # e.g. accuracy without labels: nothing to gate
            higher = HIGHER_IS_BETTER[metric]
            passed = value >= limit if higher else value <= limit
            gates.append(GateResult(metric.value, float(value), limit, ">=" if higher else "<=", bool(passed)))
        return gates

    def gate_latency(self, key: str, latency: Latency, p50_of: dict[str, float]) -> list[GateResult]:
        gates = []
        for name, budget in self.latency.get(key, {}).items():
            if name in _LATENCY_KEYS:
                value = getattr(latency, _LATENCY_KEYS[name])
                if value is not None:
                    gates.append(GateResult(f"latency_{name}", value, float(budget), "<=", value <= float(budget)))
            elif name == "p50_ratio":
                other = p50_of.get(str(budget["to"]))
                if latency.p50 is not None and other:
                    ratio = latency.p50 / other
                    gates.append(GateResult(f"latency_p50_ratio_to_{budget['to']}", ratio, float(budget["max"]), "<=",
                                            ratio <= float(budget["max"])))
        return gates


def load_policy(path: str | Path | None = None) -> Policy:
    """The shipped defaults, with the user's file (if any) merged over them table by table."""
    policy = _parse(DEFAULT_POLICY)
    if path is None:
        return policy
    user = _parse(Path(path))
    for key, limits in user.metric_limits.items():
        policy.metric_limits[key] = {**policy.metric_limits.get(key, {}), **limits}
    for key, budgets in user.latency.items():
        policy.latency[key] = {**policy.latency.get(key, {}), **budgets}
    policy.source = str(path)
    return policy


def _parse(path: Path) -> Policy:
    data = read_structured(path, "policy")
    precisions = {p.value for p in Precision}
    formats = {f.value for f in Format}
    metrics = {m.value for m in Metric}
    policy = Policy(source=str(path))

    def limits(table: Any, where: str) -> dict[str, float]:
        if not isinstance(table, dict):
            raise UserError(f"{path}: [{where}] must be a table of metric = limit")
        for k, v in table.items():
            if k not in metrics:
                raise UserError(f"{path}: [{where}] has unknown metric '{k}'; known: {', '.join(sorted(metrics))}")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise UserError(f"{path}: [{where}] {k} must be a number, got {v!r}")
        return {k: float(v) for k, v in table.items()}

    for key, value in data.items():
        if key in precisions:
            policy.metric_limits[key] = limits(value, key)
        elif key in formats:
            for prec, table in value.items():
                if prec not in precisions:
                    raise UserError(f"{path}: [{key}.{prec}]: unknown precision '{prec}'")
                policy.metric_limits[f"{key}.{prec}"] = limits(table, f"{key}.{prec}")
        elif key == "latency":
            for fmt, per in value.items():
                for prec, budgets in per.items():
                    bad = set(budgets) - set(_LATENCY_KEYS) - {"p50_ratio"}
                    if fmt not in formats or prec not in precisions or bad:
                        raise UserError(f"{path}: [latency.{fmt}.{prec}] is not a known artifact or has unknown "
                                        f"budgets {sorted(bad)}; use p50_ms, p90_ms, p99_ms, mean_ms, p50_ratio")
                    policy.latency[f"{fmt}.{prec}"] = dict(budgets)
        else:
            raise UserError(f"{path}: unknown table [{key}]: use a precision ({', '.join(sorted(precisions))}), "
                            "a format.precision, or latency")
    return policy
