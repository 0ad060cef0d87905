"""Release over release: this run's report against a previous one (``--baseline PATH``).

Each artifact is matched with the baseline's artifact of the same format and precision (in order, when a report
holds several of one kind) and checked against the policy's ``[baseline]`` budgets (``policy.toml``):

- ``accuracy_top1`` and ``top1_agreement`` may drop by at most ``accuracy_top1_drop`` / ``top1_agreement_drop``
  (fractions: 0.01 is 1 point), ``sqnr_db`` by at most ``sqnr_db_drop`` dB (not set by default). Both figures
  are counts over the same samples, so they are compared **as counts** when both reports ran on ``n`` samples:
  the drop is ``round(drop * n)`` samples against ``budget * n`` (a 1-point budget on 360 images allows 3.6, so 3
  images), never failing on float representation error (0.8 - 0.7 is 0.10000000000000009 in binary floating
  point). With different sample counts they are not compared (the note says so).
- ``size_bytes`` may grow by at most ``size_growth`` (relative: 0.05 is 5 %).
- ``latency_ms.p50`` may grow by at most ``latency_p50_growth`` (relative), **only when both reports were
  measured on the same machine description** (:func:`latency_context`: CPU model, architecture, logical cores,
  int8 ISA features, the artifact's thread count and its runtime's version); otherwise the check is reported as
  skipped, naming what differs, never compared across machines.
- Device latency (``--latency-from``): each device figure against the baseline's figure of the same device,
  delegate and threads, by ``p50_ms`` (or ``mean_ms`` when a log gives no median), with the same growth budget.

An artifact not in the baseline is ``new`` (nothing to compare); one in the baseline and not in this run is listed
under ``missing`` in the report's ``baseline`` block, and fails the release when the policy says
``fail_on_missing = true``. A failed check is a gate (``baseline_<figure>``) whose failure names the baseline
figure, e.g. ``accuracy_top1 96.1 % vs the baseline's 98.3 % (report.json of 2026-11-30...): drop 2.2 pp, budget 1
pp``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgeship.errors import UserError
from edgeship.fileio import read_structured
from edgeship.schema import Fraction, NonNegative, NonNegativeInt, check
from edgeship.validate.policy import Policy
from edgeship.validate.results import ArtifactResult, BaselineCheck, GateResult, Report, Status
from edgeship.validate.units import NA, fmt_db, fmt_mb, fmt_ms, fmt_pct, fmt_pp

REPORT_NAME = "report.json"
#: The packages whose version decides a runtime's speed (keys of report.json's ``versions``).
RUNTIME_PACKAGES = {"litert": ("ai-edge-litert",), "onnxruntime": ("onnxruntime",), "coreml": ("coremltools",),
                    "coreml-reference": ("edgeship", "numpy")}
#: Runtimes that ship with the operating system (Apple's Core ML framework): its version is the OS's.
OS_RUNTIMES = frozenset({"coreml"})
#: The machine keys (report.json ``machine``) that must be equal for latencies to be compared.
MACHINE_KEYS = ("cpu_model", "architecture", "cores", "isa")
_TOL = 1e-9  # relative figures (growth): a budget met within rounding of the JSON's floats is met


def find_baseline(path: str | Path) -> Path:
    """``PATH`` itself if it is a file; else ``PATH/report.json`` or ``PATH/report/report.json`` (an ``edgeship run``
    output directory). Raises :class:`UserError` when there is none."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (p / REPORT_NAME, p / "report" / REPORT_NAME):
        if candidate.is_file():
            return candidate
    raise UserError(f"--baseline {p}: no report.json there; pass a previous run's report.json or the directory "
                    "holding it")


def load_baseline(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(path, the baseline report as a dict)``: a report.json as written, of this edgeship's schema version
    (:data:`edgeship.validate.results.SCHEMA_VERSION`). Raises :class:`UserError` (one line) for a file that is not
    a report, or one of another schema version (its keys may mean something else)."""
    p = find_baseline(path)
    if p.suffix == ".json":
        data = read_structured(p, "baseline report")
    else:  # a report.json saved under another name (a release asset, a cache entry)
        import json

        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read baseline report {p}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise UserError(f"--baseline {p}: not an edgeship report.json (no 'artifacts' list)")
    from edgeship.validate.results import SCHEMA_VERSION

    version = data.get("schema_version")
    if version != SCHEMA_VERSION:  # its keys mean something else: comparing them could pass a release wrongly
        raise UserError(f"--baseline {p}: report.json schema_version {version!r}, this edgeship compares "
                        f"{SCHEMA_VERSION}: validate the baseline release again with this edgeship "
                        f"(edgeship {data.get('edgeship_version', '?')} wrote it)")
    check(_BaselineReport, data, f"--baseline {p}")  # every figure compared is a number, or absent
    return p, data


class _Figures(BaseModel):
    """The figures of a baseline report.json the comparison reads, type-checked before any work (issue 29: a NaN,
    an infinity or a string where a figure belongs ended a run with exit 4 after the work). Other keys are kept
    unread; a figure is absent, ``null`` or a finite number of its kind (``sqnr_db`` may also be the strings
    report.json writes for a non-finite value)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class _BaselineMetrics(_Figures):
    accuracy_top1: Fraction | None = None
    top1_agreement: Fraction | None = None
    sqnr_db: float | Literal["Infinity", "-Infinity", "NaN"] | None = None


class _BaselineLatency(_Figures):
    p50: NonNegative | None = None


class _BaselineDevice(_Figures):
    device: str | None = None
    delegate: str | None = None
    threads: int | None = None
    p50_ms: NonNegative | None = None
    mean_ms: NonNegative | None = None


class _BaselineArtifact(_Figures):
    format: str
    precision: str
    status: Literal["passed", "failed", "skipped"] | None = None
    path: str | None = None
    runtime: str | None = None
    threads: int | None = None
    metrics: _BaselineMetrics | None = None
    size_bytes: NonNegativeInt | None = None
    latency_ms: _BaselineLatency | None = None
    device_latency: list[_BaselineDevice] | None = None


class _BaselineData(_Figures):
    count: NonNegativeInt | None = None


class _BaselineReport(_Figures):
    schema_version: int
    created: str | None = None
    artifacts: list[_BaselineArtifact]
    machine: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    data: _BaselineData | None = None


def latency_context(machine: dict[str, Any], versions: dict[str, Any], artifact: dict[str, Any]) -> dict[str, Any]:
    """What a latency figure depends on besides the file: the machine description (:data:`MACHINE_KEYS`, from
    :func:`edgeship.machine.describe_machine`), the artifact's threads, its runtime and that runtime's version(s)
    (:data:`RUNTIME_PACKAGES` in report.json's ``versions``; for Core ML, which ships with the OS, the OS). Everything
    it needs is already in report.json: ``machine``, ``versions`` and each artifact's ``runtime`` and ``threads``."""
    ctx: dict[str, Any] = {k: (tuple(machine[k]) if isinstance(machine.get(k), list) else machine.get(k))
                           for k in MACHINE_KEYS}
    runtime = str(artifact.get("runtime"))
    ctx["threads"] = artifact.get("threads")
    ctx["runtime"] = runtime
    for pkg in RUNTIME_PACKAGES.get(runtime, ()):
        ctx[f"{pkg} version"] = versions.get(pkg)
    if runtime in OS_RUNTIMES:
        ctx["os"] = machine.get("os")
    return ctx


def _describe_difference(now: dict[str, Any], then: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return "[" + ", ".join(map(str, v)) + "]"
        return "unknown" if v is None else str(v)

    diffs = [f"{k} {show(then.get(k))} -> {show(now.get(k))}" for k in now if now.get(k) != then.get(k)]
    return "; ".join(diffs)


def _index(artifacts: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in artifacts:
        by.setdefault((str(a.get("format")), str(a.get("precision"))), []).append(a)
    return by


def _num(x: Any) -> float | None:
    """A number of report.json (non-finite floats are written as strings there) or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def _drop_check(figure: str, value: Any, base: Any, budget: float | None, n_now: Any, n_then: Any,
                count_based: bool) -> BaselineCheck:
    v, b = _num(value), _num(base)
    if v is None or b is None:
        return BaselineCheck(figure, v, b, None, "drop", budget, None,
                             "not measured in " + ("the baseline" if b is None else "this run"))
    change = b - v
    if budget is None:
        return BaselineCheck(figure, v, b, change, "drop", None, None, "no budget in the policy")
    if count_based:
        if not (isinstance(n_now, int) and n_now == n_then):
            return BaselineCheck(figure, v, b, change, "drop", budget, None,
                                 f"the baseline ran on {n_then} samples, this run on {n_now}")
        passed = round(change * n_now) <= budget * n_now + _TOL  # in samples: counts, not float fractions
    elif math.isinf(b) and math.isinf(v) and b == v:
        passed, change = True, 0.0  # both infinite (bit-exact outputs): no drop
    elif math.isnan(change):
        passed = False
    else:
        passed = change <= budget + _TOL
    return BaselineCheck(figure, v, b, change, "drop", budget, bool(passed))


def _growth_check(figure: str, value: Any, base: Any, budget: float | None, note: str | None = None,
                  device: str | None = None) -> BaselineCheck:
    v, b = _num(value), _num(base)
    if v is None or b is None or b <= 0:
        return BaselineCheck(figure, v, b, None, "growth", budget, None,
                             note or "not measured in " + ("the baseline" if b is None or b <= 0 else "this run"),
                             device)
    change = v / b - 1.0
    if note is not None:
        return BaselineCheck(figure, v, b, change, "growth", budget, None, note, device)
    if budget is None:
        return BaselineCheck(figure, v, b, change, "growth", None, None, "no budget in the policy", device)
    return BaselineCheck(figure, v, b, change, "growth", budget, bool(change <= budget + _TOL), None, device)


def _device_checks(a: ArtifactResult, then: dict[str, Any], budget: float | None) -> list[BaselineCheck]:
    out = []
    previous = then.get("device_latency") or []
    for d in a.device_latency:
        match = next((p for p in previous if p.get("device") == d.device and p.get("delegate") == d.delegate
                      and p.get("threads") == d.threads), None)
        figure = "device_p50_ms" if d.p50_ms is not None else "device_mean_ms"
        key = "p50_ms" if d.p50_ms is not None else "mean_ms"
        if match is None:
            out.append(BaselineCheck(figure, getattr(d, key), None, None, "growth", budget, None,
                                     f"the baseline has no figure from {d.label}", d.label))
            continue
        out.append(_growth_check(figure, getattr(d, key), match.get(key), budget, device=d.label))
    return out


def compare_with_baseline(report: Report, baseline: str | Path | tuple[Path, dict[str, Any]], policy: Policy) -> Report:
    """Check ``report`` against the baseline (a path, or :func:`load_baseline`'s result) under ``policy.baseline``;
    adds ``baseline_checks`` and ``baseline_*`` gates to each artifact (a failed one fails the artifact, its reason
    naming the baseline figure) and the ``baseline`` block to the report. Returns ``report``."""
    path, data = baseline if isinstance(baseline, tuple) else load_baseline(baseline)
    budgets = policy.baseline
    then_by = _index([a for a in data["artifacts"] if isinstance(a, dict)])
    used: dict[tuple[str, str], int] = {}
    then_machine = data.get("machine") or {}
    then_versions = data.get("versions") or {}
    n_then = (data.get("data") or {}).get("count")
    n_now = report.data.get("count")
    created = data.get("created") or "unknown date"
    where = f"{path.name} of {created}"
    for a in report.artifacts:
        key = (a.format, a.precision)
        i = used.get(key, 0)
        candidates = then_by.get(key, [])
        if i >= len(candidates):
            a.baseline_status = "new"
            continue
        used[key] = i + 1
        then = candidates[i]
        a.baseline_status = "compared"
        if a.status is Status.SKIPPED or then.get("status") == "skipped":
            note = "skipped in " + ("this run" if a.status is Status.SKIPPED else "the baseline")
            a.baseline_checks = [BaselineCheck(f, None, None, None, k, budgets.get(b), None, note) for f, k, b in (
                ("accuracy_top1", "drop", "accuracy_top1_drop"), ("top1_agreement", "drop", "top1_agreement_drop"),
                ("size_bytes", "growth", "size_growth"), ("latency_p50_ms", "growth", "latency_p50_growth"))]
            continue
        m, tm = a.metrics, then.get("metrics") or {}
        checks = [
            _drop_check("accuracy_top1", m.accuracy_top1, tm.get("accuracy_top1"), budgets.get("accuracy_top1_drop"),
                        n_now, n_then, True),
            _drop_check("top1_agreement", m.top1_agreement, tm.get("top1_agreement"),
                        budgets.get("top1_agreement_drop"), n_now, n_then, True),
        ]
        if "sqnr_db_drop" in budgets:
            checks.append(_drop_check("sqnr_db", m.sqnr_db, tm.get("sqnr_db"), budgets["sqnr_db_drop"], None, None,
                                      False))
        checks.append(_growth_check("size_bytes", a.size_bytes, then.get("size_bytes"), budgets.get("size_growth")))
        now_ctx = latency_context(report.machine, report.versions, {"runtime": a.runtime, "threads": a.threads})
        then_ctx = latency_context(then_machine, then_versions, then)
        differs = _describe_difference(now_ctx, then_ctx)
        checks.append(_growth_check("latency_p50_ms", a.latency_ms.p50, (then.get("latency_ms") or {}).get("p50"),
                                    budgets.get("latency_p50_growth"),
                                    note=f"measured on another machine ({differs})" if differs else None))
        checks += _device_checks(a, then, budgets.get("latency_p50_growth"))
        a.baseline_checks = checks
        failed = [c for c in checks if c.passed is False]
        for c in checks:
            if c.passed is not None and c.change is not None and c.budget is not None:
                suffix = f" on {c.device}" if c.device else ""
                a.gates.append(GateResult(f"baseline_{c.figure}_{c.kind}{suffix}", c.change, c.budget, "<=",
                                          bool(c.passed)))
        if failed:
            text = "; ".join(describe_check(c, where) for c in failed)
            a.reason = f"{a.reason}; {text}" if a.status is Status.FAILED and a.reason else text
            a.status = Status.FAILED
    missing = []
    for key, candidates in then_by.items():
        for then in candidates[used.get(key, 0):]:
            missing.append({"format": key[0], "precision": key[1], "runtime": then.get("runtime"),
                            "path": then.get("path")})
    report.baseline = {
        "path": str(path), "created": data.get("created"), "edgeship_version": data.get("edgeship_version"),
        "machine": then_machine, "data_count": n_then, "missing": missing,
        "fail_on_missing": policy.fail_on_missing, "budgets": dict(budgets),
    }
    return report


def _fmt(figure: str, x: float | None) -> str:
    if figure in ("accuracy_top1", "top1_agreement"):
        return fmt_pct(x)
    if figure == "sqnr_db":
        return fmt_db(x)
    if figure == "size_bytes":
        return fmt_mb(x)
    return fmt_ms(x)


def fmt_change(c: BaselineCheck) -> str:
    """``"drop 2.2 pp"``, ``"+12.0 %"``, ``"drop 1.5 dB"``; "n/a" when not computed."""
    if c.change is None:
        return NA
    if c.kind == "growth":
        return f"{c.change * 100:+.1f} %"
    if c.figure == "sqnr_db":
        return f"drop {c.change:.1f} dB"
    return f"drop {fmt_pp(c.change)}"


def fmt_budget(c: BaselineCheck) -> str:
    if c.budget is None:
        return NA
    if c.kind == "growth":
        return f"≤ +{c.budget * 100:g} %"
    return f"≤ {c.budget:g} dB" if c.figure == "sqnr_db" else f"≤ {fmt_pp(c.budget)}"


def describe_check(c: BaselineCheck, where: str = "the baseline") -> str:
    """One line naming the figure, both values and the budget: ``accuracy_top1 96.1 % vs 98.3 % in the baseline
    (report.json of ...): drop 2.2 pp, budget ≤ 1.0 pp``."""
    figure = c.figure + (f" on {c.device}" if c.device else "")
    return (f"{figure} {_fmt(c.figure, c.value)} vs {_fmt(c.figure, c.baseline)} in the baseline ({where}): "
            f"{fmt_change(c)}, budget {fmt_budget(c)}")


def check_result(c: BaselineCheck) -> str:
    """"met", "MISSED" or "not checked: <why>"."""
    if c.passed is None:
        return f"not checked: {c.note}" if c.note else "not checked"
    return "met" if c.passed else "MISSED"


def baseline_summary(report: Report) -> str | None:
    """One terminal line: ``baseline report.json (2026-11-30...): 8 checks met, 1 missed, 2 not checked (latency_p50_ms:
    measured on another machine (...)); missing: onnx int8``; None without a baseline."""
    b = report.baseline
    if b is None:
        return None
    checks = [c for a in report.artifacts for c in a.baseline_checks]
    met = sum(c.passed is True for c in checks)
    missed = sum(c.passed is False for c in checks)
    unchecked = [c for c in checks if c.passed is None]
    name = Path(str(b.get("path"))).name
    text = f"baseline {name} ({b.get('created') or 'undated'}): {met} checks met, {missed} missed"
    if unchecked:
        notes = sorted({f"{c.figure}: {c.note}" for c in unchecked if c.note})
        text += f", {len(unchecked)} not checked ({'; '.join(notes[:2])}{'; ...' if len(notes) > 2 else ''})"
    new = [f"{a.format} {a.precision}" for a in report.artifacts if a.baseline_status == "new"]
    if new:
        text += f"; new: {', '.join(new)}"
    if b.get("missing"):
        missing = [f"{m.get('format')} {m.get('precision')}" for m in b["missing"]]
        text += f"; missing: {', '.join(missing)}"
    return text
