"""report.md (a CI job summary) and the plain-text table the CLI prints."""

from __future__ import annotations

import textwrap
from typing import Any, Iterable

from edgeship.validate.results import ArtifactResult, Report, Status
from edgeship.validate.reports.common import (
    BASELINE_COLUMNS,
    DEVICE_COLUMNS,
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
    baseline_intro,
    baseline_rows,
    confidence_intro,
    confidence_lines,
    feed_lines,
    fmt_accuracy,
    fmt_accuracy_counted,
    fmt_counted,
    fmt_db,
    fmt_drop,
    fmt_err,
    fmt_mb,
    fmt_number,
    fmt_ms,
    fmt_pct,
    fmt_pp,
    device_rows,
    kernel_path_lines,
    metric_cells,
    undecided_warnings,
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
    conversions = data.pop("input_conversions", None)  # edgeship.data's decoder policy, per conversion
    if conversions:
        details.append("converted: " + ", ".join(f"{k} {_fmt_meta(v)}" for k, v in conversions.items()))
    details.extend(f"{k}={_fmt_meta(v)}" for k, v in data.items())
    if details:
        data_text += f" ({', '.join(details)})"
    lines = [("Reference", ref_text), ("Data", data_text)]
    if report.preprocessing:
        lines.append(("Preprocessing", _fmt_meta(report.preprocessing)))
    if report.labels:
        shown = ", ".join(report.labels[:10]) + (", …" if len(report.labels) > 10 else "")
        lines.append(("Labels", f"{len(report.labels)} classes: {shown}"))
    if report.policy:  # which limits decided the verdict
        lines.append(("Policy", f"{report.policy.get('path', NA)}"
                      + ("" if report.policy.get("shipped") else " over the shipped defaults")))
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
    ex = report.executor or {}
    if ex.get("name") == "ray":
        node = ex.get("latency_node") or {}
        out.append(f"- **Executor:** Ray ({_md(str(ex.get('address')))}), {ex.get('workers')} workers, "
                   f"{ex.get('shards')} shards on {_md(', '.join(ex.get('nodes') or []))}; latency timed once on node "
                   f"{_md(str(node.get('hostname')))} ({_md(str(node.get('ip')))}, {_md(str(node.get('node_id'))[:12])})")
    failed = report.data.get("failed_samples") or []
    if failed:
        out.append(f"- **Unreadable samples:** {len(failed)}, left out (first: {_md(failed[0]['source'])}: "
                   f"{_md(failed[0]['reason'])})")
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
                fmt_counted(a, "top1_agreement", m.top1_agreement),
                fmt_counted(a, "confident_flips", m.confident_flips),
                fmt_db(m.sqnr_db), fmt_err(m.max_abs_error), fmt_accuracy_counted(a), fmt_ms(lat.p50),
                fmt_mb(a.size_bytes),
            ]))
        out.append("")
        warnings = [(a, w) for a in report.artifacts for w in undecided_warnings(a)]
        if warnings:
            out += ["**Warning: undecided gates** (the sample is too small to show the gate is met; "
                    '`[statistics] undecided = "fail"` fails them):', ""]
            out += [f"- ⚠ {_md(a.name)}: {_md_code(w)}" for a, w in warnings] + [""]
        kind = getattr(report, "output_kind", "logits")
        if kind in _KIND_HEADINGS:
            out += [f"**Output: {kind}** ("
                    + ("decisions at the policy's threshold agreeing with the reference's; mean average precision on "
                       "labelled data" if kind == "multilabel" else
                       "the lowest cosine similarity to the reference's; nearest neighbour in the data set "
                       "unchanged") + "; the top-1 and accuracy columns do not apply):", ""]
            for a in report.artifacts:
                m = a.metrics
                figures = ", ".join(f"{label} {text}" for label, text in metric_cells(a, kind, only_kind=True))
                out.append(f"- {_md(f'{a.format} {a.precision}')}: {_md(figures)}")
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
    out += device_markdown(report) + baseline_markdown(report)

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


def device_markdown(report: Report) -> list[str]:
    """The "Latency on devices" section (figures from --latency-from benchmark logs); [] without any."""
    rows = device_rows(report)
    if not rows:
        return []
    out = ["**Latency on devices** (LiteRT benchmark\\_model on the device; batch 1, ms):", "",
           _md_row(DEVICE_COLUMNS), _md_row(["---", "---", "---"] + ["--:"] * 9 + ["---"])]
    out += [_md_row(_md(c) for c in row) for row in rows]
    return out + [""]


def baseline_markdown(report: Report) -> list[str]:
    """The "Against the baseline" section (--baseline); [] without a baseline."""
    if report.baseline is None:
        return []
    out = [f"**Against the baseline:** {_md(baseline_intro(report))}", ""]
    rows = baseline_rows(report)
    if rows:
        out += [_md_row(BASELINE_COLUMNS), _md_row(["---", "---", "--:", "--:", "--:", "--:", "---"])]
        for _, cells in rows:
            shown = [_md(c) for c in cells]
            if cells[-1].startswith("MISSED"):
                shown[-1] = f"**{shown[-1]}**"
            out.append(_md_row(shown))
    return out + [""]


# ================================================================================================ terminal
_TERM_COLUMNS = ["format", "precision", "runtime", "status", "top-1", "max err", "SQNR", "acc drop", "p50", "size"]
_TERM_RIGHT = {"top-1", "max err", "SQNR", "acc drop", "p50", "size"}
_TERM_CELL_MAX = 16
_TERM_COUNTED_MAX = 24  # the top-1 cell with its counts: "99.7 % (35999/36000)"


def truncate(s: str, width: int) -> str:
    return s if len(s) <= width else s[: max(width - 3, 0)] + "..."


def _kind_cells(kind: str, m: Any) -> tuple[str, str]:
    """The agreement and drop cells of one row, by output kind: top-1 and accuracy drop for class outputs; label
    decisions and mAP drop for multi-label scores; mean cosine and nearest-neighbour agreement for embeddings; mean
    cosine and the largest error over the output's range for regressions; pixel agreement and mIoU against the
    reference's class map for segmentations."""
    if kind == "multilabel":
        return fmt_pct(m.label_agreement), fmt_drop(m.mean_average_precision_drop)
    if kind == "embedding":
        return fmt_number(m.cosine, ".4f"), fmt_pct(m.neighbour_agreement)
    if kind == "segmentation":
        return fmt_pct(m.pixel_agreement), fmt_pct(m.mean_iou)
    if kind == "regression":
        return fmt_number(m.cosine, ".4f"), fmt_number(m.max_relative_error, ".3g")
    return fmt_pct(m.top1_agreement), fmt_drop(m.accuracy_top1_drop)


#: The two kind-dependent columns' headings (in place of "top-1" and "acc drop").
_KIND_HEADINGS = {"multilabel": ("labels", "mAP drop"), "embedding": ("cosine", "NN agree"),
                  "regression": ("cosine", "err/range"), "segmentation": ("pixels", "mIoU")}


def summary_table(report: Report) -> str:
    """A plain-text table for the terminal: one row per artifact, the reason (and failing gates) of each
    failed or skipped row on indented lines below it, then the verdict. Lines are at most 120 characters.
    For multi-label and embedding outputs the top-1 and accuracy-drop columns give that kind's figures
    (:func:`_kind_cells`)."""
    kind = getattr(report, "output_kind", "logits")
    agree_h, drop_h = _KIND_HEADINGS.get(kind, ("top-1", "acc drop"))
    columns = [agree_h if c == "top-1" else drop_h if c == "acc drop" else c for c in _TERM_COLUMNS]
    right = {agree_h if c == "top-1" else drop_h if c == "acc drop" else c for c in _TERM_RIGHT}
    rows = []
    for a in report.artifacts:
        m, lat = a.metrics, a.latency_ms
        status = {Status.PASSED: "passed", Status.FAILED: "FAILED", Status.SKIPPED: "skipped"}[Status(a.status)]
        agree, drop = _kind_cells(kind, m)
        counted = None if kind in _KIND_HEADINGS else "top1_agreement"
        if counted and a.count_of(counted):
            agree = fmt_counted(a, counted, getattr(m, counted))
        cells = [a.format, a.precision, a.runtime, status, agree, fmt_err(m.max_abs_error),
                 fmt_db(m.sqnr_db), drop, fmt_ms(lat.p50), fmt_mb(a.size_bytes)]
        rows.append([truncate(_one_line(c), _TERM_COUNTED_MAX if i == 4 else _TERM_CELL_MAX)
                     for i, c in enumerate(cells)])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(columns)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, columns)]
        return truncate("  ".join(parts).rstrip(), TABLE_WIDTH)

    out = [line(columns), line(["-" * w for w in widths])]
    indent = " " * 4
    for a, row in zip(report.artifacts, rows):
        out.append(line(row))
        truth = getattr(a.metrics, "mean_iou_truth", None)  # a segmentation with ground-truth masks: its own line
        if kind == "segmentation" and truth is not None:
            out.append(indent + "against the ground truth: mIoU "
                       + fmt_accuracy(truth, getattr(a.metrics, "mean_iou_truth_drop", None)))
        for warning in undecided_warnings(a):  # an observed pass the sample cannot decide: flagged, not hidden
            wrapped = textwrap.wrap(_one_line(warning), TABLE_WIDTH - len(indent) - 9)
            out.extend(indent + ("warning: " if j == 0 else " " * 9) + w for j, w in enumerate(wrapped))
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
