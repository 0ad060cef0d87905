"""The validator's four report files, and the terminal table.

:func:`write_reports` writes, into one directory, each file atomically:

``report.json``
    The machine-readable record: ``Report.to_dict()`` (schema documented in :mod:`edgeship.validate.results`
    and ``docs/report-schema.md``), indented by 2.
``report.md``
    A job summary for GitHub Actions (``$GITHUB_STEP_SUMMARY``) or a GitLab/MR comment: verdict, inputs, one
    table row per artifact, the latency measured on devices (``--latency-from``) and each figure beside the
    baseline's (``--baseline``), then the failing gates, reasons and flipped samples of each failed artifact.
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

from pathlib import Path
from typing import Callable

from edgeship.fileio import write_bytes_atomic
from edgeship.validate.reports.common import REPORT_FILES, to_json
from edgeship.validate.reports.html import to_html
from edgeship.validate.reports.junit import to_junit
from edgeship.validate.reports.markdown import summary_table, to_markdown
from edgeship.validate.results import Report

__all__ = ["REPORT_FILES", "summary_table", "to_html", "to_json", "to_junit", "to_markdown", "write_reports"]

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
