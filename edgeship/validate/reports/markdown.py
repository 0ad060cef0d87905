"""report.md (a CI job summary) and the plain-text table the CLI prints."""

from __future__ import annotations

import textwrap
from typing import Iterable

from edgeship.validate.results import ArtifactResult, Report, Status
from edgeship.validate.reports.common import (
    MD_MAX_FLIPS,
    NA,
    TABLE_WIDTH,
    _counts_text,
    _failing_gates,
    _fmt_meta,
    _is_required_skip,
    _md,
    _md_code,
    _measured_on,
    _one_line,
    _problem_lines,
    _reason_beyond_gates,
    _required_skipped,
    _verdict,
    confidence_intro,
    confidence_lines,
    feed_lines,
    fmt_accuracy,
    fmt_db,
    fmt_err,
    fmt_mb,
    fmt_ms,
    fmt_pct,
    fmt_pp,
    kernel_path_lines,
)


MD_COLUMNS = ["Artifact", "Runtime", "Status", "Top-1 agreement", "Confident flips", "SQNR", "Max abs err",
              "Accuracy (drop)", "p50", "Size"]
_MD_ALIGN = ["---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]


def _md_status(report: Report, a: ArtifactResult) -> str:
    if a.status == Status.PASSED:
        return "**PASS**"
    if a.status == Status.FAILED:
        return "**FAIL**"
    return "**skipped (required)**" if _is_required_skip(report, a) else "skipped"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def inputs_lines(report: Report) -> list[tuple[str, str]]:
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
    if report.contract is not None:  # edgeship.validate.contract
        lines.append(("Preprocessing contract", report.contract.describe().removeprefix("preprocessing contract ")))
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
    for name, text in inputs_lines(report):
        if name == "Reference" and ref.get("sha256"):
            rest = {k: v for k, v in ref.items() if k not in ("path", "sha256")}
            text_md = f"{_md(ref.get('path', NA))} (sha256 {_md_code(str(ref['sha256'])[:16])})"
            if rest:
                text_md += "; " + _md(_fmt_meta(rest))
        else:
            text_md = _md(text)
        out.append(f"- **{name}:** {text_md}")
    measured_on = _measured_on(report)
    if measured_on:
        out.append(f"- **Measured on:** {_md(measured_on)}")
    if report.created or report.edgeship_version:
        out.append(f"- **Created:** {_md(report.created or NA)} by edgeship {_md(report.edgeship_version or NA)}")
    out.append("")

    if report.artifacts:
        out.append(_md_row(MD_COLUMNS))
        out.append(_md_row(_MD_ALIGN))
        for a in report.artifacts:
            m, lat = a.metrics, a.latency_ms
            out.append(_md_row([
                _md(f"{a.format} {a.precision}"), _md(a.runtime), _md_status(report, a),
                fmt_pct(m.top1_agreement), fmt_pct(m.confident_flips), fmt_db(m.sqnr_db), fmt_err(m.max_abs_error),
                fmt_accuracy(m.accuracy_top1, m.accuracy_top1_drop), fmt_ms(lat.p50), fmt_mb(a.size_bytes),
            ]))
        out.append("")
        feeds = feed_lines(report)
        if feeds:
            out += ["**Input feed** (each file as its client feeds it):", ""]
            out += [f"- {_md(feed)}: {_md(names)}" for feed, names in feeds] + [""]
        split = confidence_lines(report)
        if split:
            out += [f"**Flips by confidence:** {_md(confidence_intro(report))}", ""]
            out += [f"- {_md(name)}: {_md(text)}" for name, text in split] + [""]
        paths = kernel_path_lines(report)
        if paths:
            out += ["**Portability:** each int8 file against a second kernel path of its runtime, one that no CPU's "
                    "8-bit instructions change (ORT's unfused graph, LiteRT's reference kernels). The two round "
                    "differently at every layer, so equal values are not expected; a kernel that saturates on "
                    "this CPU shows as a low SQNR.", ""]
            out += [f"- {_md(name)}: {_md(text)}" for name, text in paths] + [""]
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
            out.append(_md_row(["#", "Source", "Reference", "Artifact", "Truth", "Reference margin"]))
            out.append(_md_row(["--:", "---", "---", "---", "---", "--:"]))
            for f in shown:
                out.append(_md_row([str(f.index), _md(f.source), _md(f.reference), _md(f.artifact),
                                    _md(f.truth) if f.truth is not None else NA,
                                    NA if f.margin is None else f"{f.margin:.3f}"]))
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


def truncate(s: str, width: int) -> str:
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
        rows.append([truncate(_one_line(c), _TERM_CELL_MAX) for c in cells])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_TERM_COLUMNS)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if h in _TERM_RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, _TERM_COLUMNS)]
        return truncate("  ".join(parts).rstrip(), TABLE_WIDTH)

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
                wrapped[-1] = truncate(wrapped[-1] + " ...", TABLE_WIDTH - len(indent) - len(label))
            out.extend(indent + (label if j == 0 else " " * len(label)) + w for j, w in enumerate(wrapped))
    if not report.artifacts:
        out.append("(no artifacts)")
    if report.contract is not None:  # the preprocessing contract (edgeship.validate.contract)
        out.extend(textwrap.wrap(_one_line(report.contract.describe()), TABLE_WIDTH))
    verdict = f"{_verdict(report)}: {_counts_text(report)}"
    if report.contract is not None and report.contract.status == "failed":
        verdict += " (preprocessing contract failed)"
    if _required_skipped(report):
        verdict += f" (required format skipped: {', '.join(_one_line(f) for f in _required_skipped(report))})"
    out.append(truncate(verdict, TABLE_WIDTH))
    return "\n".join(out)


# ================================================================================================ JUnit XML
