"""report.html: one self-contained page with plots (:mod:`.plots`) and thumbnails, every outside text escaped."""

from __future__ import annotations

import base64

from edgeship.machine import KernelFamily
from edgeship.validate.results import ArtifactResult, Flip, Report, Status
from edgeship.validate.reports.markdown import MD_COLUMNS, inputs_lines
from edgeship.validate.reports.plots import (
    _error_plot,
    _latency_plot,
    _layer_plot,
    _plot_or_note,
    latency_log_scale,
    layer_groups,
    layer_title,
)
from edgeship.validate.reports.common import (
    BASELINE_COLUMNS,
    DEVICE_COLUMNS,
    baseline_intro,
    baseline_rows,
    device_rows,
    HTML_MAX_FLIPS,
    MACHINE_LABELS,
    NA,
    _counts_text,
    _failing_gates,
    _finite,
    _h,
    _is_required_skip,
    _machine_items,
    _problem_lines,
    _reason_beyond_gates,
    _runtime_versions,
    _margin_bin_name,
    _verdict,
    confidence_intro,
    feed_lines,
    metric_cells,
    missed_columns,
    fmt_accuracy_counted,
    fmt_counted,
    fmt_db,
    fmt_drop,
    fmt_err,
    fmt_gate_value,
    fmt_mb,
    fmt_ms,
    fmt_number,
    fmt_pct,
    undecided_warnings,
)


_CSS = """
:root{color-scheme:light}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
 margin:1.5rem auto;max-width:1320px;padding:0 1rem}
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
header.verdict{border:1px solid #d0d7de;border-left-width:.5rem;border-radius:.4rem;padding:.6rem 1rem;margin:0 0 1rem}
header.verdict.failed{background:#fff5f5;border-color:#cf222e}
header.verdict.passed{background:#f4fbf6;border-color:#2da44e}
header.verdict h1{font-size:1.5rem}
header.verdict h1 .verdict-word{font-weight:700}
header.verdict.failed .verdict-word{color:#a40e26}
header.verdict.passed .verdict-word{color:#116329}
#why h2{font-size:1.05rem;border:0;margin:.6rem 0 .2rem;padding:0}
#why ul{margin:.2rem 0;padding-left:1.2rem}
#why li{margin:.15rem 0;overflow-wrap:anywhere}
#why ul ul{list-style:disc}
.scroll{overflow-x:auto;max-width:100%}
.scroll td code{overflow-wrap:normal;white-space:nowrap}
td.missed{background:#ffcecb;color:#82071e;font-weight:600}
td.why{min-width:11rem;max-width:24rem;overflow-wrap:anywhere}
tr.gate-failed td{background:#fff5f5}
tr.gate-undecided td,td.undecided,.undecided{background:#fff8c5}
.badge.undecided{color:#7d4e00}
dl.meta{display:grid;grid-template-columns:fit-content(40%) minmax(0,1fr);gap:.15rem 1rem;margin:.5rem 0}
dl.meta dt{font-weight:600;overflow-wrap:anywhere}
@media (max-width:600px){dl.meta{grid-template-columns:minmax(0,1fr)}dl.meta dd{margin-bottom:.3rem}}
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
.side-by-side{display:flex;gap:0 2rem;flex-wrap:wrap}
.side-by-side>*{min-width:0;max-width:100%}
footer{margin-top:2.5rem;font-size:.8rem;color:#57606a}
"""

# Nothing but inline styles and data: images may load, even if an escaping bug let markup through.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _badge(report: Report, a: ArtifactResult) -> str:
    status = Status(a.status)
    if _is_required_skip(report, a):
        return '<span class="badge failed">skipped (required)</span>'
    text = {Status.PASSED: "PASS", Status.FAILED: "FAIL", Status.SKIPPED: "skipped"}[status]
    return f'<span class="badge {status.value}">{text}</span>'


def _thumbnail_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def _table(headers: list[str], rows: list[list[str]], num_cols: set[int] | None = None,
           row_classes: list[str] | None = None, cell_classes: list[list[str]] | None = None) -> str:
    """HTML table; cells must already be escaped. ``cell_classes``: per row, a class for each cell ("" for none).
    The table scrolls inside its own container when it is wider than the page (a phone), not the page."""
    num_cols = num_cols or set()
    out = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{h}</th>" for h in headers)
           + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, c in enumerate(row):
            classes = " ".join(x for x in ("num" if j in num_cols else "",
                                           cell_classes[i][j] if cell_classes else "") if x)
            cells.append(f'<td class="{classes}">{c}</td>' if classes else f"<td>{c}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _dl(pairs: list[tuple[str, str]]) -> str:
    """Definition list; values must already be escaped."""
    return '<dl class="meta">' + "".join(f"<dt>{_h(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


#: The ``reference`` of a segmentation sample's record (edgeship.validate.compare._record_map_changes)
MAP_FLIP = "class map"


def _flip_figure(f: Flip) -> str:
    caption = (f.artifact if f.reference == MAP_FLIP else f"{f.reference} → {f.artifact}"
               + (f" ({f.truth})" if f.truth is not None else "")
               + (f", margin {f.margin:.2f}" if f.margin is not None else ""))
    alt = f"sample {f.index}: {caption}"
    mime = _thumbnail_mime(f.thumbnail_png) if f.thumbnail_png else None
    if mime and f.thumbnail_png:
        pic = f'<img src="data:{mime};base64,{base64.b64encode(f.thumbnail_png).decode("ascii")}" alt="{_h(alt)}">'
    else:
        pic = f'<div class="missing">{"no thumbnail" if not f.thumbnail_png else "unreadable thumbnail"}</div>'
    return (f'<figure>{pic}<figcaption>{_h(caption)}<br><span class="muted">#{f.index} '
            f"<code>{_h(f.source)}</code></span></figcaption></figure>")


def _machine_section(report: Report) -> str:
    """Where the latencies were measured: the machine block, the int8 instruction its kernel family implies,
    and the runtime versions; "" when the report recorded neither."""
    rows = []
    for key, text in _machine_items(report):
        cell = _h(text)
        family = next((f for f in KernelFamily if key == "int8_kernel_family" and f.value == text), None)
        if family is not None:
            cell += f'<br><span class="muted">{_h(family.__doc__)}</span>'
        rows.append([_h(MACHINE_LABELS.get(key, key)), cell])
    versions = [[_h(k), _h(v)] for k, v in _runtime_versions(report).items()]
    if not rows and not versions:
        return ""
    tables = (_table(["Machine", "Value"], rows) if rows else "") + (
        _table(["Runtime", "Version"], versions) if versions else "")
    return f'<section id="machine"><h2>Machine</h2><div class="side-by-side">{tables}</div></section>'


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
            value = g.counts_text() if g.samples is not None else fmt_gate_value(g.value)
            result = ('<span class="badge passed">meets</span>' if g.passed else
                      '<span class="badge failed">misses</span>')
            if g.undecided:
                result += f' <span class="badge undecided" title="{_h(g.uncertainty())}">undecided</span>'
            rows.append([f"<code>{_h(g.name)}</code>", _h(value), _h(g.op), _h(fmt_gate_value(g.limit)), result])
            classes.append("gate-failed" if not g.passed else "gate-undecided" if g.undecided else "")
        out.append(_table(["Gate", "Value", "Op", "Limit", "Result"], rows, {1, 3}, classes))
        out.extend(f'<p class="reason">Warning: {_h(w)}</p>' for w in undecided_warnings(a))
    elif a.status != Status.SKIPPED:
        out.append('<p class="muted">No gates were evaluated.</p>')
    measured = any(v is not None for v in vars(m).values()) or any(v is not None for v in vars(lat).values())
    if measured:
        kind = getattr(report, "output_kind", "logits")
        metric_rows = [[_h(label), _h(text)] for label, text in metric_cells(a, kind)]
        metric_rows.append(["input feed", _h(a.input_feed or NA)])
        metric_rows += [[f"flips, {_h(_margin_bin_name(b))}", _h(f"{b['flips']} of {b['samples']}")]
                        for b in a.flips_by_margin]
        if a.kernel_path:  # the same file through a second kernel path of its runtime
            metric_rows.append([f"second kernel path ({_h(a.kernel_path_samples)} samples)", _h(a.kernel_path)])
            metric_rows += [[_h(label), _h(text)] for label, text in metric_cells(a, kind, kernel_path=True)]
        lat_rows = [[k, _h(fmt_ms(getattr(lat, k)))] for k in ("load", "first", "p50", "p90", "p99", "mean", "std")]
        out.append('<div class="side-by-side">' + _table(["Metric", "Value"], metric_rows, {1})
                   + _table(["Latency", "Value"], lat_rows, {1}) + "</div>")
    return "\n".join(out)


def _device_section(report: Report) -> str:
    """Latency measured on real devices (--latency-from), one row per benchmark log; "" without any."""
    rows = device_rows(report)
    if not rows:
        return ""
    return ('<section id="devices"><h2>Latency on devices</h2><p class="muted">LiteRT benchmark_model on the device '
            "(batch 1, ms), read from its log.</p>"
            + _table([_h(c) for c in DEVICE_COLUMNS], [[_h(c) for c in r] for r in rows], set(range(3, 12)))
            + "</section>")


def _baseline_section(report: Report) -> str:
    """Each figure beside the baseline's, with the change and the budget (--baseline); "" without a baseline."""
    if report.baseline is None:
        return ""
    rows, classes = [], []
    for _, cells in baseline_rows(report):
        missed = cells[-1].startswith("MISSED")
        result = f'<span class="badge failed">{_h(cells[-1])}</span>' if missed else (
            '<span class="badge passed">met</span>' if cells[-1] == "met" else _h(cells[-1]))
        rows.append([_h(c) for c in cells[:-1]] + [result])
        classes.append("gate-failed" if missed else "")
    table = _table([_h(c) for c in BASELINE_COLUMNS], rows, {2, 3, 4, 5}, classes) if rows else ""
    return f'<section id="baseline"><h2>Against the baseline</h2><p>{_h(baseline_intro(report))}</p>{table}</section>'


#: The summary table's last column: why the row is not a pass
REASON_COLUMN = "Why"


def _why_section(report: Report) -> str:
    """What decides the release, first on the page: each artifact that fails it (a failure, a skip of a required
    format) with its reasons and every gate it missed (value, the counts behind it, limit); the skips that do not
    fail it; the gates passed with a warning; on a pass with none of these, the number of gates met. Lists, not a
    table: they wrap on a phone."""
    arts = report.artifacts

    def item(i: int, a: ArtifactResult) -> str:
        sub = "".join(f"<li>{_h(line)}</li>" for line in _problem_lines(report, a))
        return (f'<li><a href="#artifact-{i}">{_h(a.name)}</a> {_badge(report, a)}'
                + (f"<ul>{sub}</ul>" if sub else "") + "</li>")

    failing = [item(i, a) for i, a in enumerate(arts) if a.status == Status.FAILED or _is_required_skip(report, a)]
    # what fails the release beside the artifacts: the reference on the data, the baseline's missing artifacts
    contract = report.contract
    if contract is not None and Status(contract.status) is Status.FAILED:
        failing.insert(0, f'<li><a href="#inputs">{_h(contract.describe())}</a></li>')
    baseline = report.baseline or {}
    if baseline.get("fail_on_missing") and baseline.get("missing"):
        names = ", ".join(f"{m.get('format')} {m.get('precision')}" for m in baseline["missing"])
        failing.append(f'<li><a href="#baseline">in the baseline, missing from this run (fail_on_missing): '
                       f"{_h(names)}</a></li>")
    not_run = [item(i, a) for i, a in enumerate(arts)
               if a.status == Status.SKIPPED and not _is_required_skip(report, a)]
    warnings = [(i, a, w) for i, a in enumerate(arts) for w in undecided_warnings(a)]
    out = []
    if failing:
        out.append(f'<h2>Why it failed</h2><ul class="failing">{"".join(failing)}</ul>')
    if not_run:
        out.append(f'<h2>Not run (a skip of a format not required does not fail the release)</h2>'
                   f'<ul class="not-run">{"".join(not_run)}</ul>')
    if warnings:
        out.append('<h2>Warnings</h2><ul class="warnings">' + "".join(
            f'<li><a href="#artifact-{i}">{_h(a.name)}</a>: {_h(w)}</li>' for i, a, w in warnings) + "</ul>")
    if not out and arts:
        gates = sum(len(a.gates) for a in arts)
        out.append(f"<p>Every artifact met its gates ({gates} gates in all).</p>")
    return f'<section id="why">{"".join(out)}</section>' if out else ""


def _short_reasons(report: Report, a: ArtifactResult) -> list[str]:
    """The summary's reason cell (plain text lines): the gates missed, by name, and any reason beyond them; the
    values, counts and limits are in "Why it failed" above the table."""
    if a.status == Status.PASSED:
        return []
    lines = _problem_lines(report, a)
    failing = _failing_gates(a)
    described = {g.describe() for g in failing}
    out = [line for line in lines if line not in described]
    if failing:
        out.append("missed: " + ", ".join(g.name for g in failing))
    return out


def _summary_section(report: Report) -> str:
    """One row per artifact: its figures (a figure whose gate was missed highlighted, class ``missed``) and why
    the row is not a pass."""
    arts = report.artifacts
    if not arts:
        return '<section id="summary"><h2>Summary</h2><p class="muted">No artifacts were validated.</p></section>'
    rows, cell_classes = [], []
    # the reason column only when some row is not a pass
    with_reason = any(a.status != Status.PASSED for a in arts)
    columns = [*MD_COLUMNS, REASON_COLUMN] if with_reason else list(MD_COLUMNS)
    for i, a in enumerate(arts):
        m, lat = a.metrics, a.latency_ms
        n = len(a.undecided_gates)  # "FAIL undecided" read as one verdict: say what is undecided, and how many
        undecided = (f' <span class="badge undecided" title="the sample is too small to show these gates are met">'
                     f'{n} gate{"s" if n != 1 else ""} undecided</span>' if n else "")
        why = "<br>".join(_h(line) for line in _short_reasons(report, a))
        rows.append([f'<a href="#artifact-{i}">{_h(a.format)} {_h(a.precision)}</a>', _h(a.runtime),
                     _badge(report, a) + undecided, _h(fmt_counted(a, "top1_agreement", m.top1_agreement)),
                     _h(fmt_counted(a, "confident_flips", m.confident_flips)), _h(fmt_db(m.sqnr_db)),
                     _h(fmt_err(m.max_abs_error)), _h(fmt_accuracy_counted(a)),
                     _h(fmt_ms(lat.p50)), _h(fmt_mb(a.size_bytes))] + ([why] if with_reason else []))
        missed = missed_columns(a)
        cell_classes.append(["missed" if c in missed else "why" if c == REASON_COLUMN and why else ""
                             for c in columns])
    table = _table([_h(c) for c in columns], rows, {3, 4, 5, 6, 7, 8, 9}, cell_classes=cell_classes)
    return f'<section id="summary"><h2>Summary</h2>{table}</section>'


def to_html(report: Report) -> str:
    """``report.html``: one self-contained page (see the module docstring). The verdict and what fails the release
    come first, then the summary table; the inputs and the machine after it."""
    verdict = _verdict(report)
    arts = report.artifacts
    body: list[str] = []
    state = "passed" if report.passed else "failed"
    body.append(f'<header id="verdict" class="verdict {state}"><h1>edgeship validation: '
                f'<span class="verdict-word">{verdict}</span></h1>')
    body.append(f"<p>{_h(_counts_text(report))} ({len(arts)} artifacts)"
                + (f"; required formats: {_h(', '.join(report.required_formats))}" if report.required_formats
                   else "") + ".</p>")
    body.append(_why_section(report))  # a required format's skip among the reasons
    body.append("</header>")

    body.append(_summary_section(report))

    timed = [a for a in arts if _finite(a.latency_ms.p50)]
    body.append('<section id="latency"><h2>Latency</h2>')
    if timed:
        scale = "; a logarithmic axis, as the runtimes differ by more than an order of magnitude" if (
            latency_log_scale(timed)) else ""
        body.append(f'<p class="muted">p50 and p90 on this machine, in ms; one colour per runtime{scale}. The '
                    "latency gates are in the summary and each artifact's gate table.</p>")
        body.append(_plot_or_note(_latency_plot(arts), (8.0, 1.2 + 0.45 * len(timed)), "latency per artifact"))
    else:
        body.append('<p class="muted">No latency was measured.</p>')
    body.append("</section>")

    body.append('<section id="inputs"><h2>Reference and data</h2>')
    feeds = [(f"Input feed: {feed}", names) for feed, names in feed_lines(report)]
    body.append(_dl([(k, _h(v)) for k, v in inputs_lines(report) + feeds]))
    body.append("</section>")
    machine = _machine_section(report)
    if machine:
        body.append(machine)

    body.append(_device_section(report))
    body.append(_baseline_section(report))

    with_errors = [a for a in arts if any(_finite(e) for e in a.sample_errors)]
    body.append('<section id="errors"><h2>Error distribution</h2>')
    if with_errors:
        body.append(_plot_or_note(_error_plot(arts), (8.0, 1.4 + 0.5 * len(with_errors)),
                                  "per-sample max abs error per artifact"))
    else:
        body.append('<p class="muted">No per-sample errors were recorded.</p>')
    body.append("</section>")

    groups = layer_groups(arts)
    if groups:
        body.append('<section id="layer-sqnr"><h2>Per-layer SQNR</h2><p class="muted">Each quantised layer\'s '
                    "output against the float model's, from the quantise stage; files with the same figures (the "
                    "int8 ONNX rewritten from the int8 TFLite) share one chart.</p>")
        for group in groups:
            draw, size, caption = _layer_plot(group)
            title = layer_title(group)
            body.append(f'<h3 class="layer-chart">{_h(title)}</h3><p class="muted">{_h(caption)}</p>')
            body.append(_plot_or_note(draw, size, f"per-layer SQNR of {title}: {caption}"))
        body.append("</section>")

    flipped = [a for a in arts if a.flips]
    maps = getattr(report, "output_kind", "logits") == "segmentation"
    if flipped:
        if maps:
            body.append('<section id="flips"><h2>Changed class maps</h2>'
                        '<p class="muted">Samples whose class map differs from the reference\'s on 1 % of its pixels '
                        "or more: the image, the reference's class map over it, the artifact's (pixels whose class "
                        "changed in red).</p>")
        else:
            body.append('<section id="flips"><h2>Flipped samples</h2>'
                        '<p class="muted">Top-1 label of the reference → the artifact (ground truth), and the '
                        f"reference's top-1 margin. {_h(confidence_intro(report))}</p>")
        for a in flipped:
            # the comparison keeps thumbnails for the first flips only: show those (placeholders only when no
            # flip has one); report.json lists every flip
            shown = [f for f in a.flips if f.thumbnail_png][:HTML_MAX_FLIPS] or a.flips[:HTML_MAX_FLIPS]
            more = f", {len(shown)} shown (all in report.json)" if len(a.flips) > len(shown) else ""
            body.append(f"<h3>{_h(a.name)}: {len(a.flips)} {'changed' if maps else 'flipped'}{more}</h3>")
            body.append('<div class="thumbs">' + "".join(_flip_figure(f) for f in shown) + "</div>")
        body.append("</section>")

    if arts:
        body.append('<section id="artifacts"><h2>Artifacts</h2>')
        body.extend(_artifact_section(report, i, a) for i, a in enumerate(arts))
        body.append("</section>")

    body.append(f"<footer>Created {_h(report.created or NA)} by edgeship {_h(report.edgeship_version or NA)}."
                "</footer>")  # the runtime versions are in the Machine section

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
