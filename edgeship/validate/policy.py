"""Release gates as data: a TOML policy (shipped defaults in ``policy.toml`` beside this module; users override
any of it with ``--policy FILE``), evaluated against an artifact's metrics and latency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.errors import UserError
from edgeship.fileio import read_structured
from edgeship.types import Format, Precision
from edgeship.validate.metrics import CONFIDENT_MARGIN, HIGHER_IS_BETTER, MARGIN_BINS, Metric
from edgeship.validate.results import GateResult, Latency, Metrics

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
_LATENCY_KEYS = {"p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99", "mean_ms": "mean"}


@dataclass
class Policy:
    metric_limits: dict[str, dict[str, float]] = field(default_factory=dict)  # "fp32" or "tflite.fp32" -> limits
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # "tflite.int8" -> budgets
    source: str = str(DEFAULT_POLICY)
    # [confidence]: edges of the reference top-1 margin bins flips are counted in, and the margin from which an
    # answer counts as confident (the confident_flips metric)
    margin_bins: tuple[float, ...] = MARGIN_BINS
    confident_margin: float = CONFIDENT_MARGIN
    # [contract]: limits of the preprocessing contract check (edgeship.validate.contract)
    contract: dict[str, float] = field(default_factory=dict)

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
    _confidence(policy, read_structured(Path(path), "policy").get("confidence", {}), Path(path))  # key by key
    policy.contract = {**policy.contract, **user.contract}
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
        elif key == "confidence":
            _confidence(policy, value, path)
        elif key == "contract":
            policy.contract = _contract(value, path)
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
                            "a format.precision, confidence, contract, or latency")
    return policy


def _contract(table: Any, path: Path) -> dict[str, float]:
    """``[contract]``: min_samples, max_top1_share, min_mean_margin (edgeship.validate.contract)."""
    from edgeship.validate.contract import CONTRACT_KEYS

    if not isinstance(table, dict) or set(table) - set(CONTRACT_KEYS):
        raise UserError(f"{path}: [contract] takes {', '.join(CONTRACT_KEYS)} (numbers)")
    for k, v in table.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise UserError(f"{path}: [contract] {k} must be a number >= 0, got {v!r}")
    return {k: float(v) for k, v in table.items()}


def _confidence(policy: Policy, table: Any, path: Path) -> None:
    """``[confidence]``: ``margin_bins`` (increasing edges strictly inside (0, 1)) and ``confident_margin`` (in
    (0, 1]); a key left out keeps the shipped value."""
    if not isinstance(table, dict) or set(table) - {"margin_bins", "confident_margin"}:
        raise UserError(f"{path}: [confidence] takes margin_bins = [edges] and confident_margin = number")
    if "margin_bins" in table:
        bins = table["margin_bins"]
        ok = isinstance(bins, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bins)
        if not ok or any(not 0 < b < 1 for b in bins) or list(bins) != sorted(set(bins)):
            raise UserError(f"{path}: [confidence] margin_bins must be increasing numbers between 0 and 1, got {bins!r}")
        policy.margin_bins = tuple(float(b) for b in bins)
    if "confident_margin" in table:
        t = table["confident_margin"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise UserError(f"{path}: [confidence] confident_margin must be a number in (0, 1], got {t!r}")
        policy.confident_margin = float(t)
