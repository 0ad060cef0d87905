"""The validator's four report files, and the terminal table.

:func:`write_reports` writes, into one directory, each file atomically:

``report.json``
    The machine-readable record: ``Report.to_dict()`` (schema documented in :mod:`edgeship.validate.results`
    and ``docs/report-schema.md``), indented by 2.
``report.md``
    A job summary for GitHub Actions (``$GITHUB_STEP_SUMMARY``) or a GitLab/MR comment: verdict, inputs, one
    table row per artifact, then the failing gates, reasons and flipped samples of each failed artifact.
``report.html``
    One self-contained page: inline CSS, plots and thumbnails as inline base64 PNG, no script, no external
    URL (a Content-Security-Policy meta tag forbids loading anything that is not inline).
``junit.xml``
    For CI test tabs (GitLab, Jenkins, GitHub test reporters): one testcase per artifact and gate.

Non-finite floats in ``report.json``: JSON has no NaN or infinity, and ``json.dumps`` would write the invalid
tokens ``NaN``/``Infinity``. Every non-finite float, wherever it sits (metrics, latency, gates, sample errors,
per-layer SQNR), is written as one of the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. ``null`` keeps its
one meaning, "not measured": an infinite SQNR (outputs bit-identical to the reference) is a measurement, not a
missing one. Those three strings are what ``float(s)`` in Python and ``Number(s)`` in JavaScript parse back.
The file is dumped with ``allow_nan=False``, so it is always strict JSON. NumPy scalars and arrays are written as
plain numbers and lists, paths as strings.

Units in the human-readable reports (formatting helpers below, in one place): agreements and accuracies are
fractions in [0, 1] shown as percentages ("99.7 %"); the accuracy drop in percentage points ("0.8 pp"); SQNR in
dB with one decimal; latencies in ms with two decimals; sizes in MB (10^6 bytes) with two decimals; anything not
measured is "n/a".

Every piece of text that comes from outside the code (labels, paths, reasons, metadata) is escaped for the format
it lands in (``html.escape`` for HTML, backslash escapes for Markdown, ElementTree for XML); control characters
and lone surrogates (undecodable file names) are shown as ``\\xNN`` / ``\\uNNNN`` so no file can be made
invalid, and no terminal escape sequence reaches the terminal.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable

from edgeship.fileio import write_bytes_atomic
from edgeship.validate.results import ArtifactResult, Flip, GateResult, Report, Status

log = logging.getLogger(__name__)

REPORT_FILES = {"json": "report.json", "md": "report.md", "html": "report.html", "junit": "junit.xml"}

MD_MAX_FLIPS = 10  # flipped samples listed per failed artifact in report.md
HTML_MAX_FLIPS = 48  # flipped samples shown per artifact in report.html
LAYER_PLOT_MAX = 40  # layers drawn per artifact in the per-layer SQNR plot (the lowest, when there are more)
TABLE_WIDTH = 120  # summary_table's line limit


def write_reports(report: Report, directory: Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html, junit.xml into directory (created if needed); return {kind: path}.

    Kinds are ``"json"``, ``"md"``, ``"html"``, ``"junit"``. Each file is written atomically with
    :func:`edgeship.fileio.write_bytes_atomic`; report.json first, so the record exists even if a later
    writer fails."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Report], str]] = {"json": to_json, "md": to_markdown, "html": to_html,
                                                   "junit": to_junit}
    paths: dict[str, Path] = {}
    for kind, writer in writers.items():
        path = directory / REPORT_FILES[kind]
        text = writer(report)
        if not text.endswith("\n"):
            text += "\n"
        write_bytes_atomic(path, text.encode("utf-8"))
        paths[kind] = path
    return paths


# ================================================================================================ formatting
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


def fmt_accuracy(accuracy: float | None, drop: float | None) -> str:
    """``"91.2 % (drop 0.8 pp)"``; just the accuracy when the drop is unknown."""
    if accuracy is None and drop is None:
        return NA
    text = fmt_pct(accuracy)
    return text if drop is None else f"{text} (drop {fmt_pp(drop)})"


def fmt_gate_value(x: float | None) -> str:
    return fmt_number(x, ".6g")


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
    rest = a.reason
    for g in failing:
        rest = rest.replace(g.describe(), "")
    return None if failing and not rest.strip(" ;,\n") else a.reason


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
_MD_COLUMNS = ["Artifact", "Runtime", "Status", "Top-1 agreement", "SQNR", "Max abs err", "Accuracy (drop)", "p50",
               "Size"]
_MD_ALIGN = ["---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:"]


def _md_status(report: Report, a: ArtifactResult) -> str:
    if a.status == Status.PASSED:
        return "**PASS**"
    if a.status == Status.FAILED:
        return "**FAIL**"
    return "**skipped (required)**" if _is_required_skip(report, a) else "skipped"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _inputs_lines(report: Report) -> list[tuple[str, str]]:
    """(name, plain text) pairs for the reference/data/preprocessing lines of the md and html reports."""
    ref = dict(report.reference)
    ref_text = _fmt_meta(ref.pop("path", NA))
    sha = ref.pop("sha256", None)
    if sha:
        ref_text += f" (sha256 {sha})"
    if ref:
        ref_text += "; " + _fmt_meta(ref)
    data = dict(report.data)
    data_text = _fmt_meta(data.pop("source", NA))
    details = []
    if "count" in data:
        details.append(f"{_fmt_meta(data.pop('count'))} samples")
    if "labeled" in data:
        details.append("labeled" if data.pop("labeled") else "unlabeled")
    details.extend(f"{k}={_fmt_meta(v)}" for k, v in data.items())
    if details:
        data_text += f" ({', '.join(details)})"
    lines = [("Reference", ref_text), ("Data", data_text)]
    if report.preprocessing:
        lines.append(("Preprocessing", _fmt_meta(report.preprocessing)))
    if report.labels:
        shown = ", ".join(report.labels[:10]) + (", …" if len(report.labels) > 10 else "")
        lines.append(("Labels", f"{len(report.labels)} classes: {shown}"))
    return lines


def to_markdown(report: Report) -> str:
    """``report.md``: a job summary (GitHub Actions ``$GITHUB_STEP_SUMMARY``, GitLab comments)."""
    verdict = _verdict(report)
    out = [f"## edgeship validation: {verdict}", ""]
    headline = f"**{verdict}**: {_counts_text(report)} ({len(report.artifacts)} artifacts)"
    if report.required_formats:
        headline += f"; required formats: {_md(', '.join(report.required_formats))}"
    out += [headline + ".", ""]
    for fmt in _required_skipped(report):
        out += [f"Required format {_md(fmt)} was skipped, which fails the release.", ""]
    ref = report.reference
    for name, text in _inputs_lines(report):
        if name == "Reference" and ref.get("sha256"):
            rest = {k: v for k, v in ref.items() if k not in ("path", "sha256")}
            text_md = f"{_md(ref.get('path', NA))} (sha256 {_md_code(str(ref['sha256'])[:16])})"
            if rest:
                text_md += "; " + _md(_fmt_meta(rest))
        else:
            text_md = _md(text)
        out.append(f"- **{name}:** {text_md}")
    if report.created or report.edgeship_version:
        out.append(f"- **Created:** {_md(report.created or NA)} by edgeship {_md(report.edgeship_version or NA)}")
    out.append("")

    if report.artifacts:
        out.append(_md_row(_MD_COLUMNS))
        out.append(_md_row(_MD_ALIGN))
        for a in report.artifacts:
            m, lat = a.metrics, a.latency_ms
            out.append(_md_row([
                _md(f"{a.format} {a.precision}"), _md(a.runtime), _md_status(report, a),
                fmt_pct(m.top1_agreement), fmt_db(m.sqnr_db), fmt_err(m.max_abs_error),
                fmt_accuracy(m.accuracy_top1, m.accuracy_top1_drop), fmt_ms(lat.p50), fmt_mb(a.size_bytes),
            ]))
        out.append("")
    else:
        out += ["No artifacts were validated.", ""]

    for a in report.artifacts:
        if a.status != Status.FAILED:
            continue
        out += [f"### FAIL: {_md(a.name)}", "", f"Path: {_md(a.path)}", ""]
        reason = _reason_beyond_gates(a)
        if reason:
            out += [f"Reason: {_md(reason)}", ""]
        failing = _failing_gates(a)
        if failing:
            out.append("Failing gates:")
            out.extend(f"- {_md_code(g.describe())}" for g in failing)
            out.append("")
        if a.flips:
            shown = a.flips[:MD_MAX_FLIPS]
            what = f"first {len(shown)} of {len(a.flips)}" if len(a.flips) > len(shown) else str(len(shown))
            out += [f"Flipped samples ({what}):", ""]
            out.append(_md_row(["#", "Source", "Reference", "Artifact", "Truth"]))
            out.append(_md_row(["--:", "---", "---", "---", "---"]))
            for f in shown:
                out.append(_md_row([str(f.index), _md(f.source), _md(f.reference), _md(f.artifact),
                                    _md(f.truth) if f.truth is not None else NA]))
            out.append("")

    skipped = [a for a in report.artifacts if a.status == Status.SKIPPED]
    if skipped:
        out += ["### Skipped", ""]
        for a in skipped:
            note = " (required format)" if _is_required_skip(report, a) else ""
            out.append(f"- {_md(a.name)}{note}: {_md(a.reason or 'no reason given')}")
        out.append("")
    return "\n".join(out)


# ================================================================================================ terminal
_TERM_COLUMNS = ["format", "precision", "runtime", "status", "top-1", "max err", "SQNR", "acc drop", "p50", "size"]
_TERM_RIGHT = {"top-1", "max err", "SQNR", "acc drop", "p50", "size"}
_TERM_CELL_MAX = 16


def _truncate(s: str, width: int) -> str:
    return s if len(s) <= width else s[: max(width - 3, 0)] + "..."


def summary_table(report: Report) -> str:
    """A plain-text table for the terminal: one row per artifact, the reason (and failing gates) of each
    failed or skipped row on indented lines below it, then the verdict. Lines are at most 120 characters."""
    rows = []
    for a in report.artifacts:
        m, lat = a.metrics, a.latency_ms
        status = {Status.PASSED: "passed", Status.FAILED: "FAILED", Status.SKIPPED: "skipped"}[Status(a.status)]
        cells = [a.format, a.precision, a.runtime, status, fmt_pct(m.top1_agreement), fmt_err(m.max_abs_error),
                 fmt_db(m.sqnr_db), fmt_pp(m.accuracy_top1_drop), fmt_ms(lat.p50), fmt_mb(a.size_bytes)]
        rows.append([_truncate(_one_line(c), _TERM_CELL_MAX) for c in cells])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_TERM_COLUMNS)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if h in _TERM_RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, _TERM_COLUMNS)]
        return _truncate("  ".join(parts).rstrip(), TABLE_WIDTH)

    out = [line(_TERM_COLUMNS), line(["-" * w for w in widths])]
    indent = " " * 4
    for a, row in zip(report.artifacts, rows):
        out.append(line(row))
        if a.status == Status.PASSED:
            continue
        for i, problem in enumerate(_problem_lines(report, a)):
            label = "reason: " if i == 0 else "        "
            wrapped = textwrap.wrap(_one_line(problem), TABLE_WIDTH - len(indent) - len(label)) or [""]
            if len(wrapped) > 3:
                wrapped = wrapped[:3]
                wrapped[-1] = _truncate(wrapped[-1] + " ...", TABLE_WIDTH - len(indent) - len(label))
            out.extend(indent + (label if j == 0 else " " * len(label)) + w for j, w in enumerate(wrapped))
    if not report.artifacts:
        out.append("(no artifacts)")
    verdict = f"{_verdict(report)}: {_counts_text(report)}"
    if _required_skipped(report):
        verdict += f" (required format skipped: {', '.join(_one_line(f) for f in _required_skipped(report))})"
    out.append(_truncate(verdict, TABLE_WIDTH))
    return "\n".join(out)


# ================================================================================================ JUnit XML
_XML_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def _junit_part(text: str) -> str:
    """One dotted component of a JUnit classname: dots and other separators would split the class tree."""
    return _XML_NAME_UNSAFE.sub("_", _clean(text)).strip("_") or "unknown"


def _junit_classnames(artifacts: list[ArtifactResult]) -> list[str]:
    """``edgeship.<format>.<precision>``; ``.<runtime>`` appended only where two artifacts would share a name
    (then ``.<n>`` if even that collides), so the common case keeps stable names for CI test history."""
    base = [f"edgeship.{_junit_part(a.format)}.{_junit_part(a.precision)}" for a in artifacts]
    names = [b if base.count(b) == 1 else f"{b}.{_junit_part(a.runtime)}" for a, b in zip(artifacts, base)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if names.count(n) == 1 else f"{n}.{seen[n]}")
    return unique


def to_junit(report: Report) -> str:
    """``junit.xml``: ``<testsuites>`` holding one ``<testsuite name="edgeship">``.

    Per artifact, testcases with ``classname="edgeship.<format>.<precision>"``:

    - ``runs``: passes when the artifact was measured; a ``<failure>`` when it failed without a failing gate (it
      could not be loaded or run: corrupt file, runtime error), message = the reason; ``<skipped>`` when it was
      skipped, message = the reason, unless its format is required, then a ``<failure>`` (the release fails, so
      the test tab must not be green).
    - one per gate, named after the gate: a ``<failure message=describe()>`` when it missed, ``<skipped>`` when
      the artifact was skipped.
    """
    suites = ET.Element("testsuites", name="edgeship")
    suite = ET.SubElement(suites, "testsuite", name="edgeship")
    if report.created:
        suite.set("timestamp", _clean(report.created))
    props = ET.SubElement(suite, "properties")
    meta = {
        "edgeship_version": report.edgeship_version,
        "reference": report.reference.get("path"),
        "reference_sha256": report.reference.get("sha256"),
        "data": report.data.get("source"),
        "data_count": report.data.get("count"),
        "required_formats": ",".join(report.required_formats),
        "passed": report.passed,
    }
    for k, v in meta.items():
        if v is not None and v != "":
            value = str(v).lower() if isinstance(v, bool) else _fmt_meta(v)
            ET.SubElement(props, "property", name=k, value=_one_line(value))

    tests = failures = skipped = 0

    def case(classname: str, name: str) -> ET.Element:
        nonlocal tests
        tests += 1
        return ET.SubElement(suite, "testcase", classname=classname, name=_clean(name))

    def fail(tc: ET.Element, message: str, kind: str, body: str) -> None:
        nonlocal failures
        failures += 1
        el = ET.SubElement(tc, "failure", message=_one_line(message), type=kind)
        el.text = _clean(body)

    def skip(tc: ET.Element, message: str) -> None:
        nonlocal skipped
        skipped += 1
        ET.SubElement(tc, "skipped", message=_one_line(message))

    for a, classname in zip(report.artifacts, _junit_classnames(report.artifacts)):
        details = f"artifact: {a.path}\nruntime: {a.runtime}\n"
        runs = case(classname, "runs")
        reason = a.reason or ""
        if a.status == Status.SKIPPED:
            if _is_required_skip(report, a):
                fail(runs, f"required format {a.format} was skipped: {reason or 'no reason given'}", "skipped",
                     details + f"reason: {reason}\n")
            else:
                skip(runs, reason or "skipped")
        elif a.status == Status.FAILED and not _failing_gates(a):
            fail(runs, reason or "artifact failed", "error", details + f"reason: {reason}\n")
        else:
            out = ET.SubElement(runs, "system-out")
            out.text = _clean(details + (f"reason: {reason}\n" if reason else ""))
        for g in a.gates:
            tc = case(classname, g.name)
            if a.status == Status.SKIPPED:
                skip(tc, reason or "skipped")
            elif not g.passed:
                fail(tc, g.describe(), "gate", details + g.describe() + "\n")
    for el in (suites, suite):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", str(skipped))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# ================================================================================================ HTML
_CSS = """
:root{color-scheme:light}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
 margin:1.5rem auto;max-width:1100px;padding:0 1rem}
h1{font-size:1.6rem;margin:.2rem 0}
h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:.7rem;font-weight:600;font-size:.85em;
 white-space:nowrap}
.passed{background:#dafbe1;color:#116329}
.failed{background:#ffebe9;color:#a40e26}
.skipped{background:#eaeef2;color:#57606a}
h1 .badge{font-size:1rem;vertical-align:middle}
tr.gate-failed td{background:#fff5f5}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.5rem 0}
dl.meta dt{font-weight:600}
dl.meta dd{margin:0;overflow-wrap:anywhere}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
img.plot{max-width:100%;height:auto;display:block;margin:.5rem 0}
.thumbs{display:flex;flex-wrap:wrap;gap:.8rem}
.thumbs figure{margin:0;width:8.5rem}
.thumbs img,.thumbs .missing{width:8rem;height:8rem;object-fit:contain;image-rendering:pixelated;
 border:1px solid #d0d7de;background:#f6f8fa}
.thumbs .missing{display:flex;align-items:center;justify-content:center;color:#57606a;font-size:.8rem}
figcaption{font-size:.8rem;overflow-wrap:anywhere}
.muted{color:#57606a}
.reason{background:#fff8c5;border-left:3px solid #d4a72c;padding:.3rem .6rem}
.side-by-side{display:flex;gap:2rem;flex-wrap:wrap}
footer{margin-top:2.5rem;font-size:.8rem;color:#57606a}
"""

# Nothing but inline styles and data: images may load, even if an escaping bug let markup through.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STATUS_COLOURS = {Status.PASSED: "#2da44e", Status.FAILED: "#cf222e", Status.SKIPPED: "#8c959f"}


def _badge(report: Report, a: ArtifactResult) -> str:
    status = Status(a.status)
    if _is_required_skip(report, a):
        return '<span class="badge failed">skipped (required)</span>'
    text = {Status.PASSED: "PASS", Status.FAILED: "FAIL", Status.SKIPPED: "skipped"}[status]
    return f'<span class="badge {status.value}">{text}</span>'


def _img(b64_png: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="data:image/png;base64,{b64_png}" alt="{_h(alt)}">'


def _thumbnail_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def _render_png(draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """Draw on a fresh matplotlib Figure and return it as base64 PNG.

    Uses :class:`matplotlib.figure.Figure` directly, not pyplot: no global backend switch, no figure manager
    holding figures open (nothing to close), safe from threads; savefig renders with Agg. The PNG carries no
    Software/date metadata. Text from outside goes through :func:`_axis_label`, which escapes ``$``."""
    import matplotlib

    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 9}):
        fig = Figure(figsize=size, dpi=100, layout="constrained")
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_or_note(draw: Callable[[Any], None], size: tuple[float, float], alt: str) -> str:
    try:
        return _img(_render_png(draw, size), alt)
    except ImportError as e:
        return f'<p class="muted">Plot unavailable: matplotlib is not installed ({_h(e)}).</p>'
    except Exception as e:  # a plotting bug must not cost the release its report
        log.warning("report.html: could not draw %s: %s", alt, e, exc_info=True)
        return f'<p class="muted">Plot unavailable ({_h(type(e).__name__)}: {_h(e)}).</p>'


def _axis_label(text: str, width: int = 42) -> str:
    """Text from outside for a matplotlib label: one line, shortened, ``$`` escaped (matplotlib would parse
    ``$...$`` as math and fail on unbalanced markup)."""
    return _truncate(_one_line(text), width).replace("$", r"\$")


def _latency_plot(artifacts: list[ArtifactResult]) -> Callable[[Any], None]:
    rows = [a for a in artifacts if _finite(a.latency_ms.p50)]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        y = list(range(len(rows)))
        p50 = [float(a.latency_ms.p50) for a in rows]
        p90 = [float(a.latency_ms.p90) if _finite(a.latency_ms.p90) else v for a, v in zip(rows, p50)]
        whisker = [max(hi - lo, 0.0) for lo, hi in zip(p50, p90)]
        ax.barh(y, p50, xerr=[[0.0] * len(rows), whisker], capsize=4, height=0.6,
                color=[_STATUS_COLOURS[Status(a.status)] for a in rows], error_kw={"elinewidth": 1.2})
        ax.set_yticks(y, [_axis_label(a.name) for a in rows])
        ax.invert_yaxis()
        for yi, lo, hi in zip(y, p50, p90):
            ax.text(max(lo, hi), yi, f"  {lo:.2f} ms", va="center", fontsize=8)
        right = max(max(p50), max(p90)) if rows else 1.0
        ax.set_xlim(0, right * 1.25 if right > 0 else 1.0)
        ax.set_xlabel("latency, ms (bar: p50, whisker: p90)")
        ax.grid(axis="x", alpha=0.3)

    return draw


def _error_plot(artifacts: list[ArtifactResult]) -> Callable[[Any], None]:
    rows = [(a, [float(e) for e in a.sample_errors if _finite(e)]) for a in artifacts]
    rows = [(a, errs) for a, errs in rows if errs]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        positives = [e for _, errs in rows for e in errs if e > 0]
        log_scale = bool(positives) and max(positives) / min(positives) > 100
        note = ""
        data = [errs for _, errs in rows]
        if log_scale:
            floor = min(positives) / 2
            if any(e <= 0 for errs in data for e in errs):
                note = f"; zeros drawn at {floor:.2g}"
            data = [[e if e > 0 else floor for e in errs] for errs in data]
        bp = ax.boxplot(data, orientation="horizontal", tick_labels=[_axis_label(a.name) for a, _ in rows],
                        patch_artist=True, widths=0.55, flierprops={"markersize": 3, "alpha": 0.5})
        for patch, (a, _) in zip(bp["boxes"], rows):
            patch.set_facecolor(_STATUS_COLOURS[Status(a.status)])
            patch.set_alpha(0.45)
        if log_scale:
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel(f"per-sample max |artifact - reference|{' (log scale' + note + ')' if log_scale else ''}")
        ax.grid(axis="x", alpha=0.3)

    return draw


def _layer_rows(layer_sqnr: dict[str, float]) -> tuple[list[tuple[str, float]], str]:
    """The layers to draw and a caption. Infinite SQNR (a bit-exact layer) is drawn capped; NaN is dropped."""
    items = [(str(k), float(v)) for k, v in layer_sqnr.items() if v is not None and not math.isnan(float(v))]
    if len(items) <= LAYER_PLOT_MAX:
        return items, f"{len(items)} layers, in network order"
    lowest = sorted(items, key=lambda kv: kv[1])[:LAYER_PLOT_MAX]
    return lowest, f"the {LAYER_PLOT_MAX} lowest of {len(items)} layers"


def _layer_plot(a: ArtifactResult) -> tuple[Callable[[Any], None], tuple[float, float], str]:
    rows, caption = _layer_rows(a.layer_sqnr or {})

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        finite = [v for _, v in rows if math.isfinite(v)]
        cap = (max(finite) if finite else 0.0) + 10.0
        values = [v if math.isfinite(v) else (cap if v > 0 else 0.0) for _, v in rows]
        y = list(range(len(rows)))
        ax.barh(y, values, height=0.7, color="#0969da")
        ax.set_yticks(y, [_axis_label(k, 36) for k, _ in rows], fontsize=7)
        ax.invert_yaxis()
        for yi, (_, v), shown in zip(y, rows, values):
            if not math.isfinite(v):
                ax.text(shown, yi, " inf", va="center", fontsize=7)
        ax.set_xlabel("SQNR, dB (higher is better)")
        ax.set_title(f"{_axis_label(a.name, 60)}: {caption}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)

    height = min(1.6 + 0.17 * max(len(rows), 1), 10.0)
    return draw, (8.0, height), caption


def _table(headers: list[str], rows: list[list[str]], num_cols: set[int] | None = None,
           row_classes: list[str] | None = None) -> str:
    """HTML table; cells must already be escaped."""
    num_cols = num_cols or set()
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if j in num_cols else f"<td>{c}</td>" for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _dl(pairs: list[tuple[str, str]]) -> str:
    """Definition list; values must already be escaped."""
    return '<dl class="meta">' + "".join(f"<dt>{_h(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _flip_figure(f: Flip) -> str:
    caption = f"{f.reference} → {f.artifact}" + (f" ({f.truth})" if f.truth is not None else "")
    alt = f"sample {f.index}: {caption}"
    mime = _thumbnail_mime(f.thumbnail_png) if f.thumbnail_png else None
    if mime:
        pic = f'<img src="data:{mime};base64,{base64.b64encode(f.thumbnail_png).decode("ascii")}" alt="{_h(alt)}">'
    else:
        pic = f'<div class="missing">{"no thumbnail" if not f.thumbnail_png else "unreadable thumbnail"}</div>'
    return (f'<figure>{pic}<figcaption>{_h(caption)}<br><span class="muted">#{f.index} '
            f"<code>{_h(f.source)}</code></span></figcaption></figure>")


def _artifact_section(report: Report, i: int, a: ArtifactResult) -> str:
    m, lat = a.metrics, a.latency_ms
    out = [f'<h3 id="artifact-{i}">{_h(a.name)} {_badge(report, a)}</h3>']
    problems = _problem_lines(report, a) if a.status != Status.PASSED else []
    reason = _reason_beyond_gates(a)
    if reason:
        out.append(f'<p class="reason">{_h(reason)}</p>')
    elif problems and not _failing_gates(a):
        out.append(f'<p class="reason">{_h(problems[0])}</p>')
    out.append(_dl([
        ("Path", f"<code>{_h(a.path)}</code>"),
        ("Runtime", _h(a.runtime)),
        ("Size", _h(fmt_mb(a.size_bytes))),
        ("Iterations", _h(a.iterations)),
        ("Threads", _h(NA if a.threads is None else a.threads)),
        ("Peak RSS", _h(fmt_mb(a.peak_rss_bytes))),
    ]))
    if a.gates:
        rows, classes = [], []
        for g in a.gates:
            rows.append([f"<code>{_h(g.name)}</code>", _h(fmt_gate_value(g.value)), _h(g.op),
                         _h(fmt_gate_value(g.limit)),
                         '<span class="badge passed">meets</span>' if g.passed else
                         '<span class="badge failed">misses</span>'])
            classes.append("" if g.passed else "gate-failed")
        out.append(_table(["Gate", "Value", "Op", "Limit", "Result"], rows, {1, 3}, classes))
    elif a.status != Status.SKIPPED:
        out.append('<p class="muted">No gates were evaluated.</p>')
    measured = any(v is not None for v in vars(m).values()) or any(v is not None for v in vars(lat).values())
    if measured:
        metric_rows = [
            ["top-1 agreement", _h(fmt_pct(m.top1_agreement))], ["top-5 overlap", _h(fmt_pct(m.top5_overlap))],
            ["max abs error", _h(fmt_err(m.max_abs_error))], ["mean abs error", _h(fmt_err(m.mean_abs_error))],
            ["cosine", _h(fmt_number(m.cosine, ".6f"))], ["SQNR", _h(fmt_db(m.sqnr_db))],
            ["accuracy top-1", _h(fmt_pct(m.accuracy_top1))], ["accuracy top-5", _h(fmt_pct(m.accuracy_top5))],
            ["accuracy top-1 drop", _h(fmt_pp(m.accuracy_top1_drop))],
        ]
        lat_rows = [[k, _h(fmt_ms(getattr(lat, k)))] for k in ("load", "first", "p50", "p90", "p99", "mean", "std")]
        out.append('<div class="side-by-side">' + _table(["Metric", "Value"], metric_rows, {1})
                   + _table(["Latency", "Value"], lat_rows, {1}) + "</div>")
    return "\n".join(out)


def to_html(report: Report) -> str:
    """``report.html``: one self-contained page (see the module docstring)."""
    verdict = _verdict(report)
    arts = report.artifacts
    body: list[str] = []
    body.append(f'<header><h1>edgeship validation <span class="badge {"passed" if report.passed else "failed"}">'
                f"{verdict}</span></h1>")
    body.append(f"<p>{_h(_counts_text(report))} ({len(arts)} artifacts)"
                + (f"; required formats: {_h(', '.join(report.required_formats))}" if report.required_formats
                   else "") + ".</p>")
    for fmt in _required_skipped(report):
        body.append(f'<p class="reason">Required format {_h(fmt)} was skipped, which fails the release.</p>')
    body.append("</header>")

    body.append('<section id="inputs"><h2>Reference and data</h2>')
    body.append(_dl([(k, _h(v)) for k, v in _inputs_lines(report)]))
    body.append("</section>")

    body.append('<section id="summary"><h2>Summary</h2>')
    if arts:
        rows = []
        for i, a in enumerate(arts):
            m, lat = a.metrics, a.latency_ms
            rows.append([f'<a href="#artifact-{i}">{_h(a.format)} {_h(a.precision)}</a>', _h(a.runtime),
                         _badge(report, a), _h(fmt_pct(m.top1_agreement)), _h(fmt_db(m.sqnr_db)),
                         _h(fmt_err(m.max_abs_error)), _h(fmt_accuracy(m.accuracy_top1, m.accuracy_top1_drop)),
                         _h(fmt_ms(lat.p50)), _h(fmt_mb(a.size_bytes))])
        body.append(_table([_h(c) for c in _MD_COLUMNS], rows, {3, 4, 5, 6, 7, 8}))
    else:
        body.append('<p class="muted">No artifacts were validated.</p>')
    body.append("</section>")

    timed = [a for a in arts if _finite(a.latency_ms.p50)]
    body.append('<section id="latency"><h2>Latency</h2>')
    if timed:
        body.append(_plot_or_note(_latency_plot(arts), (8.0, 1.2 + 0.45 * len(timed)), "latency per artifact"))
    else:
        body.append('<p class="muted">No latency was measured.</p>')
    body.append("</section>")

    with_errors = [a for a in arts if any(_finite(e) for e in a.sample_errors)]
    body.append('<section id="errors"><h2>Error distribution</h2>')
    if with_errors:
        body.append(_plot_or_note(_error_plot(arts), (8.0, 1.4 + 0.5 * len(with_errors)),
                                  "per-sample max abs error per artifact"))
    else:
        body.append('<p class="muted">No per-sample errors were recorded.</p>')
    body.append("</section>")

    layered = [a for a in arts if a.layer_sqnr]
    if layered:
        body.append('<section id="layer-sqnr"><h2>Per-layer SQNR</h2>')
        for a in layered:
            draw, size, caption = _layer_plot(a)
            body.append(f"<h3>{_h(a.name)}</h3>")
            body.append(_plot_or_note(draw, size, f"per-layer SQNR of {a.name}: {caption}"))
        body.append("</section>")

    flipped = [a for a in arts if a.flips]
    if flipped:
        body.append('<section id="flips"><h2>Flipped samples</h2>'
                    '<p class="muted">Top-1 label of the reference → the artifact (ground truth).</p>')
        for a in flipped:
            # the comparison keeps thumbnails for the first flips only: show those (placeholders only when no
            # flip has one); report.json lists every flip
            shown = [f for f in a.flips if f.thumbnail_png][:HTML_MAX_FLIPS] or a.flips[:HTML_MAX_FLIPS]
            more = f", {len(shown)} shown (all in report.json)" if len(a.flips) > len(shown) else ""
            body.append(f"<h3>{_h(a.name)}: {len(a.flips)} flipped{more}</h3>")
            body.append('<div class="thumbs">' + "".join(_flip_figure(f) for f in shown) + "</div>")
        body.append("</section>")

    if arts:
        body.append('<section id="artifacts"><h2>Artifacts</h2>')
        body.extend(_artifact_section(report, i, a) for i, a in enumerate(arts))
        body.append("</section>")

    footer = [f"Created {_h(report.created or NA)} by edgeship {_h(report.edgeship_version or NA)}."]
    if report.versions:
        footer.append(" " + _h(", ".join(f"{k} {v}" for k, v in report.versions.items())) + ".")
    body.append(f"<footer>{''.join(footer)}</footer>")

    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgeship validation: {verdict}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
    ])
