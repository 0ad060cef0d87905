"""junit.xml: one testcase per artifact and gate, for CI test tabs."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from edgeship.validate.results import ArtifactResult, BaselineCheck, Report, Status
from edgeship.validate.reports.common import (
    _clean,
    _failing_gates,
    _reason_beyond_gates,
    _fmt_meta,
    _is_required_skip,
    _machine_items,
    _margin_bin_name,
    _one_line,
    _runtime_versions,
)


def check_text(c: BaselineCheck) -> str:
    """A baseline check as one property value: ``"96.1 % vs 98.3 %: drop 2.2 pp, budget ≤ 1.0 pp: MISSED"``."""
    from edgeship.validate.baseline import _fmt, check_result, fmt_budget, fmt_change

    return (f"{_fmt(c.figure, c.value)} vs {_fmt(c.figure, c.baseline)}: {fmt_change(c)}, budget {fmt_budget(c)}: "
            f"{check_result(c)}")


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
    """``junit.xml``: ``<testsuites>`` holding one ``<testsuite name="edgeship">``, whose ``<properties>`` say
    what was validated and where: ``machine.<key>`` for each key of the machine block (``machine.isa``
    comma-separated), ``confidence.<key>`` (what the margin is, its bins, the confident margin) and
    ``version.<package>`` for each runtime and converter.

    Per artifact, testcases with ``classname="edgeship.<format>.<precision>"``:

    - ``runs``: passes when the artifact was measured (its ``<properties>``: ``input_feed``, ``confident_flips``,
      ``flips.<margin bin>`` as "flips of samples"); a ``<failure>`` when it failed without a failing gate (it
      could not be loaded or run: corrupt file, runtime error), message = the reason; ``<skipped>`` when it was
      skipped, message = the reason, unless its format is required, then a ``<failure>`` (the release fails, so
      the test tab must not be green).
    - one per gate, named after the gate: a ``<failure message=describe()>`` when it missed, ``<skipped>`` when
      the artifact was skipped. Device latency budgets (``device_p50_ms on Pixel 7 (gpu, 4 threads)``) and baseline
      checks (``baseline_accuracy_top1_drop``) are gates too. A gate that passed but that its sample cannot decide
      has a ``<system-out>`` warning; the "runs" case lists each rate metric's counts (``counts.top1_agreement``).

    ``runs`` also carries ``device.<device (delegate, threads)>.<figure>`` properties (``--latency-from``) and, with
    a baseline, ``baseline`` ("compared" or "new") and ``baseline.<figure>`` (this run vs the baseline, the change,
    the budget, the verdict); the suite, ``baseline.path``/``created``/``edgeship_version``. Each artifact the
    baseline had and this run lacks is a testcase ``in_baseline``: a failure with ``fail_on_missing``, else skipped.
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
        **{f"machine.{k}": v for k, v in _machine_items(report)},
        **{f"confidence.{k}": v for k, v in report.confidence.items()},
        **{f"version.{k}": v for k, v in _runtime_versions(report).items()},
        **({f"baseline.{k}": report.baseline.get(k) for k in ("path", "created", "edgeship_version")}
           if report.baseline is not None else {}),
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
            figures = {"input_feed": a.input_feed, "confident_flips": a.metrics.confident_flips,
                       **{f"counts.{k}": f"{c['successes']}/{c['samples']}" for k, c in a.counts.items()},
                     **{f"flips.{_margin_bin_name(b)}": f"{b['flips']} of {b['samples']}" for b in a.flips_by_margin},
                     **{f"device.{d.label}.{k}": getattr(d, k) for d in a.device_latency
                        for k in ("p50_ms", "mean_ms", "std_ms", "min_ms", "p95_ms", "max_ms", "first_ms", "init_ms",
                                  "runs")},
                     "baseline": a.baseline_status,
                     **{f"baseline.{c.figure}" + (f".{c.device}" if c.device else ""): check_text(c)
                        for c in a.baseline_checks}}
            if any(v is not None for v in figures.values()):
                holder = ET.SubElement(runs, "properties")
                for k, v in figures.items():
                    if v is not None:
                        ET.SubElement(holder, "property", name=_clean(k), value=_one_line(_fmt_meta(v)))
            out = ET.SubElement(runs, "system-out")
            beyond = _reason_beyond_gates(a) or ""  # a failed gate's line is in its own test case, once
            out.text = _clean(details + (f"reason: {beyond}\n" if beyond else ""))
        for g in a.gates:
            tc = case(classname, g.name)
            if a.status == Status.SKIPPED:
                skip(tc, reason or "skipped")
            elif not g.passed:
                fail(tc, g.describe(), "gate", details)  # the gate's line is the message, once
            elif g.undecided:  # passes with a warning: said in the test case's output
                ET.SubElement(tc, "system-out").text = _clean(f"warning: {g.describe()}: passes with a warning\n")
    if report.baseline is not None:
        for m in report.baseline.get("missing", []):
            classname = f"edgeship.{_junit_part(str(m.get('format')))}.{_junit_part(str(m.get('precision')))}"
            tc = case(classname, "in_baseline")
            message = (f"{m.get('format')} {m.get('precision')} is in the baseline ({report.baseline.get('path')}) "
                       "but not in this run")
            if report.baseline.get("fail_on_missing"):
                fail(tc, message, "baseline", message + "\n")
            else:
                skip(tc, message + " (fail_on_missing = false)")
    for el in (suites, suite):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", str(skipped))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# ================================================================================================ HTML
