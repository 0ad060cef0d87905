"""Escaping and counting shared by every report writer (one place for escapes; units: :mod:`edgeship.validate.units`,
re-exported here)."""

from __future__ import annotations

import html
import json
import logging
import math
import re
from pathlib import PurePath
from typing import Any

from edgeship.validate.results import ArtifactResult, GateResult, Report, Status

log = logging.getLogger(__name__)

REPORT_FILES = {"json": "report.json", "md": "report.md", "html": "report.html", "junit": "junit.xml"}

MD_MAX_FLIPS = 10  # flipped samples listed per failed artifact in report.md
HTML_MAX_FLIPS = 48  # flipped samples shown per artifact in report.html
LAYER_PLOT_MAX = 40  # layers drawn per artifact in the per-layer SQNR plot (the lowest, when there are more)
TABLE_WIDTH = 120  # summary_table's line limit

from edgeship.validate.units import (  # noqa: F401  (the report writers import them from here)
    NA,
    _finite,
    _nonfinite,
    fmt_accuracy,
    fmt_db,
    fmt_drop,
    fmt_err,
    fmt_gate_value,
    fmt_mb,
    fmt_ms,
    fmt_number,
    fmt_pct,
    fmt_pp,
)


# ================================================================================================ text safety
_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_WHITESPACE = re.compile(r"\s+")


def _clean(text: Any) -> str:
    """Text from outside the code, with every character that is invalid in XML/UTF-8 or that drives a terminal
    (C0/C1 controls except tab/newline/CR, lone surrogates, U+FFFE/U+FFFF) shown as an escape."""
    s = "" if text is None else str(text)

    def repl(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _UNSAFE_CHARS.sub(repl, s)


def _one_line(text: Any) -> str:
    """:func:`_clean`, with runs of whitespace (newlines, tabs) collapsed to one space."""
    return _WHITESPACE.sub(" ", _clean(text)).strip()


def _h(text: Any) -> str:
    """HTML-escaped (quotes too, so the result is safe in attributes as well as in text)."""
    return html.escape(_clean(text), quote=True)


# Characters that start Markdown/GFM inline markup (emphasis, code, links, HTML, tables, strikethrough, math,
# entities, issue references, mentions). Escaping an ASCII punctuation character with a backslash is always valid
# CommonMark, so over-escaping costs only raw-text readability.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|~$&#@!])")


def _md(text: Any) -> str:
    """Escaped for a Markdown table cell or an inline run: one line, markup characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _one_line(text))


def _md_code(text: Any) -> str:
    """A Markdown code span holding text verbatim (for our own strings such as gate descriptions and hashes)."""
    s = _one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _fmt_meta(value: Any) -> str:
    """A metadata value (reference/data/preprocessing dict entries) as plain, unescaped text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_number(value, "g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_meta(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt_meta(v)}" for k, v in value.items())
    if value is None:
        return NA
    return str(value)


# ================================================================================================ shared logic
def _counts(report: Report) -> dict[Status, int]:
    counts = {s: 0 for s in Status}
    for a in report.artifacts:
        counts[Status(a.status)] += 1
    return counts


def _required_skipped(report: Report) -> list[str]:
    required = set(report.required_formats)
    return sorted({a.format for a in report.artifacts if a.status == Status.SKIPPED and a.format in required})


def _counts_text(report: Report) -> str:
    c = _counts(report)
    return f"{c[Status.PASSED]} passed, {c[Status.FAILED]} failed, {c[Status.SKIPPED]} skipped"


def _verdict(report: Report) -> str:
    return "PASSED" if report.passed else "FAILED"


def _is_required_skip(report: Report, a: ArtifactResult) -> bool:
    return a.status == Status.SKIPPED and a.format in set(report.required_formats)


def _failing_gates(a: ArtifactResult) -> list[GateResult]:
    return [g for g in a.gates if not g.passed]


def _reason_beyond_gates(a: ArtifactResult) -> str | None:
    """The reason, unless it only repeats the failing gates' descriptions (the pipeline sets the reason of a
    gate failure to them, joined by "; "), which every report lists on their own anyway."""
    if not a.reason:
        return None
    failing = _failing_gates(a)
    if not failing:
        return a.reason
    rest = a.reason
    for g in failing:
        rest = rest.replace(g.describe(), "")
    # what is left beyond the gates (a note such as "(coreml-reference: ...)"), so a gate's line is printed once
    rest = rest.strip(" ;,\n")
    if rest.startswith("(") and rest.endswith(")") and rest.count("(") == 1:
        rest = rest[1:-1]
    return rest or None


def fmt_counted(a: ArtifactResult, metric: str, value: float | None) -> str:
    """A share with its counts: ``"99.7 % (359/360)"``; the share alone when it has none."""
    pair = a.count_of(metric)
    return fmt_pct(value) if pair is None or value is None else f"{fmt_pct(value)} ({pair[0]}/{pair[1]})"


def fmt_accuracy_counted(a: ArtifactResult) -> str:
    """``"98.3 % (354/360) (drop 0.0 pp)"``: :func:`fmt_accuracy` with the accuracy's counts."""
    m = a.metrics
    text = fmt_accuracy(m.accuracy_top1, m.accuracy_top1_drop)
    pair = a.count_of("accuracy_top1")
    if pair is None or m.accuracy_top1 is None:
        return text
    shown = fmt_pct(m.accuracy_top1)
    return text.replace(shown, f"{shown} ({pair[0]}/{pair[1]})", 1)


def fmt_metric(a: ArtifactResult, metric: Any) -> str:
    """One metric of ``a`` in the reports' units, chosen by its declaration
    (:data:`edgeship.validate.metrics.REGISTRY`): a share with its counts, a drop in percentage points, dB, an output
    error, a cosine to six places; "n/a" when not measured."""
    from edgeship.validate.metrics import REGISTRY, Unit

    spec, value = REGISTRY[metric], getattr(a.metrics, str(metric))
    if spec.unit is Unit.FRACTION:
        return fmt_drop(value) if str(metric).endswith("_drop") else fmt_counted(a, str(metric), value)
    if spec.unit is Unit.DB:
        return fmt_db(value)
    return fmt_err(value) if spec.unit is Unit.OUTPUT else fmt_number(value, ".6f")


def metric_cells(a: ArtifactResult, kind: str, *, kernel_path: bool = False,
                 only_kind: bool = False) -> list[tuple[str, str]]:
    """(label, text) of every registered metric measured for ``kind`` outputs, in registry order: the figures of the
    file against the reference, or with ``kernel_path`` those of its second kernel path against its first;
    ``only_kind``: just the metrics peculiar to ``kind`` (not those every kind has). A metric added to the registry
    appears here with no change to the writers."""
    from edgeship.types import OutputKind
    from edgeship.validate.metrics import ALL_KINDS, REGISTRY

    k = OutputKind(kind) if kind in {o.value for o in OutputKind} else OutputKind.LOGITS
    return [(spec.label, fmt_metric(a, metric)) for metric, spec in REGISTRY.items()
            if k in spec.kinds and spec.kernel_path == kernel_path and not (only_kind and spec.kinds == ALL_KINDS)]


def undecided_warnings(a: ArtifactResult) -> list[str]:
    """One line per gate that passed but that the sample cannot decide (``[statistics] undecided = "warn"``)."""
    return [f"{g.describe()}: passes with a warning" for g in a.gates if g.undecided and g.passed]


def _problem_lines(report: Report, a: ArtifactResult) -> list[str]:
    """Why a row is not a pass, as plain text lines (unescaped): the reason, then the failing gates."""
    lines = []
    reason = _reason_beyond_gates(a)
    if reason:
        lines.append(reason)
    elif a.status == Status.SKIPPED:
        lines.append("skipped (no reason given)")
    elif a.status == Status.FAILED and not _failing_gates(a):
        lines.append("failed (no reason given)")
    lines.extend(g.describe() for g in _failing_gates(a))
    if _is_required_skip(report, a):
        lines.append(f"{a.format} is a required format: a skip fails the release")
    return lines


# ================================================================================================ kernel paths
def _op_symbol(gate: Any) -> str:
    return "≥" if gate.op == ">=" else "≤"


def kernel_path_lines(report: Report) -> list[tuple[str, str]]:
    """(artifact name, plain text) for each artifact run through a second kernel path: which one, on how many
    samples, and how the two agreed ("onnxruntime-unfused on 360 samples: 39.9 dB, top-1 100.0 %, 91.1 % equal
    values")."""
    out = []
    for a in report.artifacts:
        if not a.kernel_path:
            continue
        m = a.metrics
        gate = next((g for g in a.gates if g.name == "kernel_path_sqnr_db"), None)
        verdict = f" (gate {_op_symbol(gate)} {gate.limit:g} dB: {'met' if gate.passed else 'MISSED'})" if gate else ""
        out.append((a.name, f"{a.runtime} against {a.kernel_path.split(':')[0]} on {a.kernel_path_samples} samples: "
                            f"{fmt_db(m.kernel_path_sqnr_db)}{verdict}, top-1 {fmt_pct(m.kernel_path_top1_agreement)}, "
                            f"{fmt_pct(m.kernel_path_equal_values)} equal values"))
    return out


# ================================================================================================ machine
MACHINE_LABELS = {"cpu_model": "CPU", "architecture": "Architecture", "cores": "Logical cores",
                  "isa": "int8 ISA features", "int8_kernel_family": "int8 kernels", "os": "OS", "python": "Python"}


def _runtime_versions(report: Report) -> dict[str, str]:
    """``report.versions`` without edgeship's own, which every report shows beside the creation time."""
    return {str(k): str(v) for k, v in report.versions.items() if k != "edgeship"}


def _machine_items(report: Report) -> list[tuple[str, str]]:
    """(key, plain text) of ``report.machine``, known keys in :data:`MACHINE_LABELS` order, then any others;
    the ISA features comma-separated ("none" when none was found)."""
    m = report.machine
    keys = [k for k in MACHINE_LABELS if k in m] + [k for k in m if k not in MACHINE_LABELS]

    def text(key: str, value: Any) -> str:
        if key == "isa" and isinstance(value, (list, tuple)):
            return ", ".join(map(str, value)) or "none"
        return _fmt_meta(value)

    return [(k, text(k, m[k])) for k in keys]


def _measured_on(report: Report) -> str:
    """Where the report was measured, one plain-text line ("" when nothing was recorded):
    ``AMD EPYC · x86_64 · 2 cores · int8 kernels: x86 AVX2 (no VNNI) · Linux-... · Python 3.11.7 · onnxruntime
    1.31.1, ...``. The ISA features behind the kernel family are in report.json, report.html and junit.xml."""
    items = dict(_machine_items(report))
    parts = [items.get("cpu_model"), items.get("architecture"),
             f"{items['cores']} cores" if report.machine.get("cores") is not None else None,
             f"int8 kernels: {items['int8_kernel_family']}" if "int8_kernel_family" in items else None,
             items.get("os"), f"Python {items['python']}" if "python" in items else None,
             ", ".join(f"{k} {v}" for k, v in _runtime_versions(report).items())]
    return " · ".join(_one_line(p) for p in parts if p)


# ================================================================================================ JSON
def _json_safe(obj: Any) -> Any:
    """A copy of obj that json.dumps(allow_nan=False) accepts: non-finite floats as "NaN"/"Infinity"/"-Infinity",
    numpy scalars and arrays as Python numbers and lists, paths as strings, tuples/sets as lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return _json_safe(obj.tolist())
    raise TypeError(f"report.json: cannot serialise {type(obj).__name__}")


def to_json(report: Report) -> str:
    """``report.json``: :meth:`Report.to_dict` as strict JSON (see the module docstring for non-finite floats)."""
    return json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False)


# ================================================================================================ Markdown


# ================================================================================================ feeds, confidence
def _margin_bin_name(b: dict[str, Any]) -> str:
    """``"margin < 0.1"``, ``"0.1-0.3"``, ``"margin >= 0.3"`` for a ``flips_by_margin`` bin."""
    lo, hi = float(b["margin_from"]), float(b["margin_to"])
    if lo == 0.0:
        return f"margin < {hi:g}"
    if hi >= 1.0:
        return f"margin ≥ {lo:g}"
    return f"{lo:g}–{hi:g}"


def feed_lines(report: Report) -> list[tuple[str, str]]:
    """(input feed, artifact names) for each distinct feed, in first-seen order: what each file was fed."""
    by: dict[str, list[str]] = {}
    for a in report.artifacts:
        if a.input_feed:
            by.setdefault(a.input_feed, []).append(f"{a.format} {a.precision}")
    return [(feed, ", ".join(names)) for feed, names in by.items()]


def confidence_lines(report: Report) -> list[tuple[str, str]]:
    """(artifact name, plain text) for each measured artifact with a margin split: its flips per bin of the
    reference's top-1 margin and its confident flips ("3 of 40 (margin < 0.1), 1 of 80 (0.1–0.3), 0 of 240
    (margin ≥ 0.3); confident flips 0.0 %")."""
    out = []
    for a in report.artifacts:
        if not a.flips_by_margin:
            continue
        bins = ", ".join(f"{b['flips']} of {b['samples']} ({_margin_bin_name(b)})" for b in a.flips_by_margin)
        out.append((a.name, f"{bins}; confident flips {fmt_pct(a.metrics.confident_flips)}"))
    return out


def confidence_intro(report: Report) -> str:
    """One sentence saying what the margin is and where a confident answer starts."""
    c = report.confidence
    if not c:
        return "Flips by the reference's top-1 margin."
    return (f"Top-1 flips by the reference's top-1 margin ({c.get('margin', 'top-1 minus runner-up probability')})."
            f" A flip under a small margin is a near-tie; from {fmt_number(c.get('confident_margin'), 'g')} on, a "
            "confident answer that changed (confident_flips).")


# ================================================================================================ devices, baseline
DEVICE_COLUMNS = ["Artifact", "Device", "Delegate", "Threads", "Runs", "p50", "Mean ± std", "Min", "p95", "Max",
                  "First", "Init", "Log"]


def device_rows(report: Report) -> list[list[str]]:
    """Plain-text cells (:data:`DEVICE_COLUMNS`) for each figure read from a real device's benchmark log."""
    rows = []
    for a in report.artifacts:
        for d in a.device_latency:
            mean = fmt_ms(d.mean_ms) + (f" ± {fmt_ms(d.std_ms)}" if d.std_ms is not None else "")
            rows.append([f"{a.format} {a.precision}", d.device, d.delegate, NA if d.threads is None else str(d.threads),
                         NA if d.runs is None else str(d.runs), fmt_ms(d.p50_ms), mean, fmt_ms(d.min_ms),
                         fmt_ms(d.p95_ms), fmt_ms(d.max_ms), fmt_ms(d.first_ms), fmt_ms(d.init_ms),
                         PurePath(d.source).name if d.source else NA])
    return rows


BASELINE_COLUMNS = ["Artifact", "Figure", "This run", "Baseline", "Change", "Budget", "Result"]


def baseline_intro(report: Report) -> str:
    """One plain-text line: which report this run was compared with, and where it was measured."""
    b = report.baseline or {}
    m = b.get("machine") or {}
    where = ", ".join(str(x) for x in (m.get("cpu_model"), m.get("int8_kernel_family")) if x)
    return (f"Compared with {b.get('path', NA)} (created {b.get('created') or NA} by edgeship "
            f"{b.get('edgeship_version') or NA}{'; measured on ' + where if where else ''}). Each artifact against "
            "the baseline's of the same format and precision; latency only when both were measured on the same "
            "machine description (CPU, cores, int8 ISA features, threads, runtime version).")


def baseline_rows(report: Report) -> list[tuple[ArtifactResult | None, list[str]]]:
    """(artifact, plain-text cells of :data:`BASELINE_COLUMNS`) per check, then one row per new artifact and per
    artifact of the baseline that this run lacks (artifact None)."""
    from edgeship.validate.baseline import _fmt, check_result, fmt_budget, fmt_change

    if report.baseline is None:
        return []
    rows: list[tuple[ArtifactResult | None, list[str]]] = []
    for a in report.artifacts:
        name = f"{a.format} {a.precision}"
        if a.baseline_status == "new":
            rows.append((a, [name, "-", "present", "absent", "new artifact", NA, "not in the baseline"]))
        for c in a.baseline_checks:
            figure = c.figure + (f" ({c.device})" if c.device else "")
            rows.append((a, [name, figure, _fmt(c.figure, c.value), _fmt(c.figure, c.baseline), fmt_change(c),
                             fmt_budget(c), check_result(c)]))
    fail = bool(report.baseline.get("fail_on_missing"))
    for m in report.baseline.get("missing", []):
        rows.append((None, [f"{m.get('format')} {m.get('precision')}", "-", "absent", "present", "missing artifact",
                            NA, "MISSED (fail_on_missing)" if fail else "reported (fail_on_missing = false)"]))
    return rows


# ================================================================================================ summary cells
#: The gates behind each figure of the summary table (:data:`edgeship.validate.reports.markdown.MD_COLUMNS`): a
#: figure whose gate was missed is the cell report.html highlights
SUMMARY_COLUMN_GATES: dict[str, tuple[str, ...]] = {
    "Top-1 agreement": ("top1_agreement",),
    "Confident flips": ("confident_flips",),
    "SQNR": ("sqnr_db",),
    "Max abs err": ("max_abs_error",),
    "Accuracy (drop)": ("accuracy_top1", "accuracy_top1_drop"),
    "p50": ("latency_p50_ms", "latency_p50_ratio_to_"),
}


def missed_columns(a: ArtifactResult) -> set[str]:
    """The summary columns (:data:`SUMMARY_COLUMN_GATES`) whose figure missed its gate for ``a``; a gate name
    ending in "_" stands for every gate it starts (the p50 ratio to each other artifact)."""
    missed = {g.name for g in _failing_gates(a)}
    return {column for column, gates in SUMMARY_COLUMN_GATES.items()
            if any(name == gate or (gate.endswith("_") and name.startswith(gate)) for gate in gates
                   for name in missed)}
