"""The four report writers and the terminal table, on hand-built reports (no model, no runtime)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from edgeship.types import Format, Precision
from edgeship.validate.reports.common import fmt_db, fmt_mb, fmt_ms, fmt_pct, fmt_pp
from edgeship.validate.reports import (
    summary_table,
    to_html,
    to_json,
    to_junit,
    to_markdown,
    write_reports,
)
from edgeship.validate.results import (
    ArtifactResult,
    Flip,
    GateResult,
    Latency,
    Metrics,
    Report,
    Status,
)

XSS = "<script>alert(1)</script>"
PIPE_LABEL = "seven|eight"
CORRUPT_REASON = "not a TFLite flatbuffer: bad magic b'\\x00' \x1b[31mred\x1b[0m"
SKIP_REASON = "Core ML prediction needs macOS"
# a made-up machine (not this one): reports must show whatever was recorded, escaped like any outside text
MACHINE = {"cpu_model": "Intel(R) Xeon(R) <b>Platinum</b> 8480+", "architecture": "x86_64", "cores": 112,
           "isa": ["sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"],
           "int8_kernel_family": "x86 AMX", "os": "Linux-6.8.0-x86_64-with-glibc2.39", "python": "3.11.9"}
VERSIONS = {"edgeship": "0.1.0", "onnxruntime": "1.31.1", "ai-edge-litert": "2.3.0", "coremltools": "not installed"}


def _png(value: int) -> bytes:
    im = Image.fromarray(np.full((28, 28), value, dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _gates_fp32() -> list[GateResult]:
    return [
        GateResult("top1_agreement", 1.0, 0.99, ">=", True),
        GateResult("max_abs_error", 1.2e-6, 1e-4, "<=", True),
        GateResult("latency_p50_ms", 1.234, 50.0, "<=", True),
    ]


def _gates_int8() -> list[GateResult]:
    return [
        GateResult("top1_agreement", 0.9, 0.99, ">=", False),
        GateResult("sqnr_db", 21.3, 25.0, ">=", False),
        GateResult("latency_p50_ms", 0.81, 50.0, "<=", True),
    ]


def _flips() -> list[Flip]:
    return [
        Flip(3, "heldout/three/0042.png", "three", XSS, "three", thumbnail_png=_png(40)),
        Flip(17, "heldout/seven/*0007*.png", PIPE_LABEL, "one", "seven", thumbnail_png=_png(120)),
        Flip(29, "array[29]", "nine", "four", None, thumbnail_png=_png(250)),
    ]


def make_report(*, layer_sqnr: bool = True, required: tuple[str, ...] = ("tflite",)) -> Report:
    passed = ArtifactResult(
        path="out/model.tflite", format="tflite", precision="fp32", runtime="litert", status=Status.PASSED,
        metrics=Metrics(max_abs_error=1.2e-6, mean_abs_error=np.float32(3.5e-7), cosine=1.0, sqnr_db=math.inf,
                        top1_agreement=1.0, top5_overlap=1.0, accuracy_top1=0.92, accuracy_top5=0.99,
                        accuracy_top1_drop=0.0),
        latency_ms=Latency(load=12.0, first=4.2, p50=1.234, p90=1.5, p99=2.0, mean=1.3, std=0.1),
        iterations=100, threads=1, peak_rss_bytes=210_000_000, size_bytes=13_450_000, gates=_gates_fp32(),
        sample_errors=[0.0, 1e-7, 2e-7, 1.2e-6],
    )
    failed = ArtifactResult(
        # the runner may fill format/precision with edgeship's str enums: every writer must treat them as text
        path="out/model_int8.onnx", format=Format.ONNX, precision=Precision.INT8, runtime="onnxruntime",
        status=Status.FAILED,
        reason="2 gates missed",
        metrics=Metrics(max_abs_error=0.21, mean_abs_error=0.01, cosine=0.98, sqnr_db=21.3, top1_agreement=0.9,
                        top5_overlap=0.97, accuracy_top1=0.85, accuracy_top1_drop=0.07),
        latency_ms=Latency(load=30.0, first=9.0, p50=0.81, p90=1.1, p99=1.6, mean=0.9, std=0.2),
        iterations=100, threads=1, size_bytes=3_600_000, gates=_gates_int8(), flips=_flips(),
        sample_errors=[0.01, 0.02, float("nan"), 0.21],
        layer_sqnr={"conv1": 35.2, "block_1_$depthwise$": 28.0, "identity": math.inf, "logits": 19.5}
        if layer_sqnr else None,
    )
    skipped = ArtifactResult(path="out/model.mlpackage", format="coreml", precision="fp16", runtime="coreml",
                             status=Status.SKIPPED, reason=SKIP_REASON, size_bytes=7_000_000)
    corrupt = ArtifactResult(path="out/broken<b>.tflite", format="tflite", precision="int8", runtime="litert",
                             status=Status.FAILED, reason=CORRUPT_REASON, size_bytes=12)
    return Report(
        reference={"path": "models/digits<b>.keras", "sha256": "ab" * 32},
        data={"source": "heldout/", "count": 360, "labeled": True},
        preprocessing={"mean": [127.5] * 3, "std": [127.5] * 3, "color": "rgb", "layout": "nhwc"},
        labels=["zero", XSS, PIPE_LABEL, "three"],
        artifacts=[passed, failed, skipped, corrupt],
        required_formats=list(required),
        created="2026-11-22T12:00:00+00:00",
        edgeship_version="0.1.0",
        versions=dict(VERSIONS),
        machine=dict(MACHINE),
    )


@pytest.fixture(scope="module")
def report() -> Report:
    return make_report()


@pytest.fixture(scope="module")
def html(report) -> str:
    return to_html(report)


# ------------------------------------------------------------------------------------------------ formatting
def test_number_formatting():
    assert fmt_pct(0.997) == "99.7 %"
    assert fmt_pct(1.0) == "100.0 %" and fmt_pct(0.0) == "0.0 %"
    assert fmt_pct(0.9999) == "99.99 %"  # one flip in 10,000 never reads as full agreement
    assert fmt_pp(0.008) == "0.8 pp" and fmt_pp(-0.0001) == "0.0 pp"
    assert fmt_db(42.34) == "42.3 dB" and fmt_db(math.inf) == "inf dB"
    assert fmt_ms(1.2345) == "1.23 ms"
    assert fmt_mb(13_450_000) == "13.45 MB"
    assert {fmt_pct(None), fmt_db(None), fmt_ms(None), fmt_mb(None)} == {"n/a"}
    assert fmt_ms(float("nan")) == "NaN ms"


# ------------------------------------------------------------------------------------------------ JSON
def test_json_is_strict_and_has_every_stable_key(report):
    text = to_json(report)

    def no_constants(token):
        raise AssertionError(f"invalid JSON token {token}")

    d = json.loads(text, parse_constant=no_constants)
    assert {"schema_version", "edgeship_version", "created", "reference", "data", "preprocessing", "labels",
            "artifacts", "required_formats", "machine", "versions", "passed", "output_kind"} <= d.keys()
    assert d["schema_version"] == 2 and d["passed"] is False
    assert d["machine"] == MACHINE and d["versions"] == VERSIONS
    assert {"path", "sha256"} <= d["reference"].keys() and {"source", "count", "labeled"} <= d["data"].keys()
    assert {"mean", "std", "color", "layout"} <= d["preprocessing"].keys()
    assert d["labels"][1] == XSS
    art_keys = {"path", "format", "precision", "runtime", "status", "reason", "metrics", "latency_ms", "iterations",
                "threads", "peak_rss_bytes", "size_bytes", "gates", "flips", "sample_errors", "layer_sqnr",
                "kernel_path", "kernel_path_samples", "input_feed", "flips_by_margin"}
    for a in d["artifacts"]:
        assert art_keys <= a.keys()
        assert {"max_abs_error", "mean_abs_error", "cosine", "sqnr_db", "top1_agreement", "top5_overlap",
                "accuracy_top1", "accuracy_top5", "accuracy_top1_drop", "equal_values", "confident_flips",
                "kernel_path_top1_agreement", "kernel_path_equal_values", "kernel_path_sqnr_db", "label_agreement",
                "mean_average_precision", "mean_average_precision_drop", "cosine_min",
                "neighbour_agreement", "max_relative_error", "pixel_agreement", "mean_iou",
                "class_iou_min", "mean_iou_truth", "mean_iou_truth_drop"} == a["metrics"].keys()
        assert {"load", "first", "p50", "p90", "p99", "mean", "std"} == a["latency_ms"].keys()
    passed, failed, skipped, corrupt = d["artifacts"]
    assert [a["status"] for a in d["artifacts"]] == ["passed", "failed", "skipped", "failed"]
    assert set(failed["gates"][0]) == {"name", "value", "limit", "op", "passed"}
    assert failed["flips"][0] == {"index": 3, "source": "heldout/three/0042.png", "reference": "three",
                                  "artifact": XSS, "truth": "three", "margin": None}  # no thumbnail bytes in JSON
    # non-finite floats are strings, consistently; null stays "not measured"; numpy scalars become numbers
    assert passed["metrics"]["sqnr_db"] == "Infinity"
    assert failed["sample_errors"][2] == "NaN" and failed["layer_sqnr"]["identity"] == "Infinity"
    assert skipped["metrics"]["sqnr_db"] is None and skipped["reason"] == SKIP_REASON
    assert passed["metrics"]["mean_abs_error"] == pytest.approx(3.5e-7)
    assert corrupt["gates"] == [] and corrupt["reason"] == CORRUPT_REASON


# ------------------------------------------------------------------------------------------------ Markdown
def test_markdown_summary(report):
    md = to_markdown(report)
    assert md.startswith("## edgeship validation: FAILED")
    assert "1 passed, 2 failed, 1 skipped" in md
    assert "**FAIL**" in md and "**PASS**" in md and "| skipped |" in md
    for g in _gates_int8()[:2]:
        assert g.describe() in md
    assert _gates_int8()[2].describe() not in md  # only the failing gates are listed
    assert "2 gates missed" in md and SKIP_REASON in md
    # labels and paths are escaped: a | would split the table row, <script> would be HTML
    assert "seven\\|eight" in md and "seven|eight" not in md
    assert "<script>" not in md and "\\<script\\>" in md
    assert "broken\\<b\\>.tflite" in md and "\x1b" not in md
    assert "heldout/seven/\\*0007\\*.png" in md
    # every table row has the same number of cells as its header
    for block in re.split(r"\n\n", md):
        rows = [l for l in block.splitlines() if l.startswith("|")]
        if rows:
            counts = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
            assert len(counts) == 1, block


def test_markdown_says_where_it_was_measured(report):
    (line,) = [l for l in to_markdown(report).splitlines() if l.startswith("- **Measured on:**")]
    assert line == ("- **Measured on:** Intel(R) Xeon(R) \\<b\\>Platinum\\</b\\> 8480+ · x86\\_64 · 112 cores · "
                    "int8 kernels: x86 AMX · Linux-6.8.0-x86\\_64-with-glibc2.39 · Python 3.11.9 · "
                    "onnxruntime 1.31.1, ai-edge-litert 2.3.0, coremltools not installed")
    md = to_markdown(report)
    assert md.index("- **Labels:**") < md.index("- **Measured on:**") < md.index("| Artifact |")


def test_reports_without_a_machine_block_omit_it():
    r = make_report()
    r.machine, r.versions = {}, {}
    assert "Measured on" not in to_markdown(r) and 'id="machine"' not in to_html(r)
    props = ET.fromstring(to_junit(r)).find("testsuite/properties")
    assert not [p for p in props if p.get("name").startswith(("machine.", "version."))]
    assert json.loads(to_json(r))["machine"] == {}


def test_reason_that_repeats_the_gates_is_not_printed_twice():
    r = make_report()
    failed = r.artifacts[1]
    failed.reason = "; ".join(g.describe() for g in failed.gates if not g.passed)  # as the pipeline sets it
    gate = failed.gates[0].describe()
    md, table = to_markdown(r), summary_table(r)
    assert md.count(gate) == 1 and table.count(gate) == 1
    assert "Reason:" not in md.split("### FAIL: onnx")[1].split("###")[0]
    # once, in "Why it failed" at the top; the artifact's gate table shows it too, no duplicate reason line
    assert to_html(r).count(gate.replace(">", "&gt;")) == 1


def test_html_shows_flips_with_thumbnails_first():
    r = make_report(layer_sqnr=False)
    r.artifacts[1].flips += [Flip(100 + i, f"x{i}.png", "a", "b") for i in range(60)]  # beyond the thumbnail limit
    html = to_html(r)
    assert html.count("<figure>") == 3 and 'class="missing"' not in html
    assert "63 flipped, 3 shown" in html


def test_markdown_lists_at_most_ten_flips(report):
    r = make_report()
    r.artifacts[1].flips = [Flip(i, f"s{i}.png", "a", "b", "a") for i in range(12)]
    md = to_markdown(r)
    assert "Flipped samples (first 10 of 12)" in md
    assert "| 9 | s9.png |" in md and "s10.png" not in md


# ------------------------------------------------------------------------------------------------ HTML
def test_html_escapes_everything_from_outside(html):
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "digits&lt;b&gt;.keras" in html and "broken&lt;b&gt;.tflite" in html
    assert "\x1b" not in html and "\\x1b[31mred" in html


def test_html_is_self_contained(html):
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_html_plots_and_thumbnails(report, html):
    # latency + error distribution + one per-layer SQNR plot + 3 thumbnails
    assert html.count("<img") == 6 and html.count('<img class="plot"') == 3
    assert "<svg" not in html
    assert 'id="layer-sqnr"' in html and 'id="latency"' in html and 'id="errors"' in html
    thumbs = re.findall(r'<figure><img src="data:image/png;base64,([^"]+)"', html)
    assert [base64.b64decode(t) for t in thumbs] == [f.thumbnail_png for f in report.artifacts[1].flips]
    assert "three → &lt;script&gt;alert(1)&lt;/script&gt; (three)" in html
    assert "seven|eight → one (seven)" in html
    for g in _gates_int8():
        assert f"<code>{g.name}</code>" in html
    assert html.count('class="badge failed">misses') == 2
    assert "Core ML prediction needs macOS" in html
    # every plot is a real PNG
    for b64 in re.findall(r'<img class="plot" src="data:image/png;base64,([^"]+)"', html):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.width > 300


def test_html_machine_section(html):
    section = re.search(r'<section id="machine">(.*?)</section>', html, re.S).group(1)
    cells = dict(re.findall(r"<tr><td>([^<]*)</td><td>(.*?)</td></tr>", section))
    assert cells["CPU"] == "Intel(R) Xeon(R) &lt;b&gt;Platinum&lt;/b&gt; 8480+"
    assert cells["Logical cores"] == "112" and cells["Python"] == "3.11.9"
    assert cells["int8 ISA features"] == "sse4_1, avx2, avx512f, avx512bw, avx512_vnni, amx_int8, amx_tile"
    assert cells["int8 kernels"].startswith("x86 AMX<br>") and "TDPBUSD" in cells["int8 kernels"]  # its instruction
    assert cells["onnxruntime"] == "1.31.1" and cells["coremltools"] == "not installed"
    assert "edgeship" not in cells  # edgeship's own version is in the footer
    # the verdict and the summary first, then the inputs and the machine
    order = [html.index(f'id="{s}"') for s in ("verdict", "summary", "inputs", "machine")]
    assert order == sorted(order)


def test_html_omits_layer_sqnr_when_absent():
    html = to_html(make_report(layer_sqnr=False))
    assert 'id="layer-sqnr"' not in html and "Per-layer SQNR" not in html
    assert html.count("<img") == 5


# ------------------------------------------------------------------------------------------------ HTML: the why first
def _summary_cells(html: str) -> dict[str, list[tuple[str, str]]]:
    """The summary table's rows by their first cell's text: [(td class, cell HTML), ...] per row."""
    section = re.search(r'<section id="summary">(.*?)</section>', html, re.S).group(1)
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)[1:]:
        cells = re.findall(r'<td(?: class="([^"]*)")?>(.*?)</td>', row, re.S)
        rows[re.sub(r"<[^>]+>", "", cells[0][1])] = cells
    return rows


def test_html_says_why_it_failed_before_anything_else(html):
    header = html[html.index("<body>"):html.index("</header>")]
    # the verdict, then each artifact that fails the release with every gate it missed (value, counts, limit)
    assert 'class="verdict failed"' in header and '<span class="verdict-word">FAILED</span>' in header
    failing = re.search(r'<ul class="failing">(.*?)</ul>\s*</li></ul>', header, re.S).group(0)
    for g in _gates_int8()[:2]:
        assert f"<li>{g.describe().replace('>', '&gt;')}</li>" in failing
    assert "latency_p50_ms" not in failing  # a met gate is no reason
    assert "tflite int8 (litert)</a>" in failing and "not a TFLite flatbuffer" in failing
    # a skip of a format not required is said apart: it does not fail the release
    not_run = re.search(r'<ul class="not-run">(.*?)</ul>', header, re.S).group(1)
    assert SKIP_REASON in not_run and SKIP_REASON not in failing
    # nothing but the header comes before the why: no section, no table
    assert "<section" not in header.replace('<section id="why">', "") and "<table" not in header


def test_html_why_gives_the_counts():
    r = make_report()
    r.artifacts[1].gates[0] = GateResult("top1_agreement", 324 / 360, 0.99, ">=", False, successes=324, samples=360,
                                         confidence=0.9, lower=0.87, upper=0.92, decided=True)
    header = to_html(r).split("</header>")[0]
    assert "<li>top1_agreement 90.0 % (324/360) misses &gt;= 99 %</li>" in header


def test_html_why_names_a_required_skip():
    html = to_html(make_report(required=("tflite", "coreml")))
    failing = re.search(r'<ul class="failing">(.*)</ul>', html[:html.index("</header>")], re.S).group(1)
    assert "coreml is a required format: a skip fails the release" in failing
    assert 'class="not-run"' not in html


def test_html_why_names_what_fails_the_release_beside_the_artifacts():
    """Every artifact passed, yet the release fails: the reference on the data, an artifact the baseline had."""
    from edgeship.validate.contract import ContractResult

    r = make_report()
    r.artifacts = r.artifacts[:1]
    r.contract = ContractResult(Status.FAILED, reason="top1_share 1 misses <= 0.9", samples=360,
                                metrics={"top1_share": 1.0, "distinct_top1": 1, "mean_margin": 1.0})
    r.baseline = {"path": "old/report.json", "fail_on_missing": True,
                  "missing": [{"format": "onnx", "precision": "int8"}]}
    assert not r.passed
    header = to_html(r).split("</header>")[0]
    failing = re.search(r'<ul class="failing">(.*)</ul>', header, re.S).group(1)
    assert "preprocessing contract FAILED" in failing and "top1_share 1 misses &lt;= 0.9" in failing
    assert "missing from this run (fail_on_missing): onnx int8" in failing
    assert "Every artifact met its gates" not in header


def test_html_passing_report_counts_its_gates():
    r = make_report()
    r.artifacts = r.artifacts[:1]
    html = to_html(r)
    assert 'class="verdict passed"' in html and "Every artifact met its gates (3 gates in all)." in html
    assert ">Why<" not in html  # no reason column when every row passed


def test_html_highlights_the_missed_figures(html):
    rows = _summary_cells(html)
    headers = re.findall(r"<th>(.*?)</th>", re.search(r'<section id="summary">(.*?)</thead>', html, re.S).group(1))
    assert headers[-1] == "Why"
    missed = {headers[j] for j, (cls, _) in enumerate(rows["onnx int8"]) if "missed" in cls.split()}
    assert missed == {"Top-1 agreement", "SQNR"}  # its two missed gates; its latency gate was met
    assert not any("missed" in cls for cls, _ in rows["tflite fp32"])
    assert rows["onnx int8"][-1][1] == "2 gates missed<br>missed: top1_agreement, sqnr_db"
    assert rows["tflite fp32"][-1][1] == ""
    assert "not a TFLite flatbuffer" in rows["tflite int8"][-1][1]


def _latency_artifacts() -> list[ArtifactResult]:
    """LiteRT at 0.3 ms (one passed, one failed) beside the NumPy Core ML reference at 130 ms."""
    def art(fmt, precision, runtime, status, p50):
        return ArtifactResult(path=f"m_{precision}.{fmt}", format=fmt, precision=precision, runtime=runtime,
                              status=status, latency_ms=Latency(p50=p50, p90=p50 * 1.2))
    return [art("tflite", "fp32", "litert", Status.PASSED, 0.31), art("tflite", "int8", "litert", Status.FAILED, 0.28),
            art("coreml", "fp32", "coreml-reference", Status.PASSED, 130.0)]


def test_latency_chart_shows_every_runtime_and_no_verdict():
    from matplotlib.figure import Figure

    from edgeship.validate.reports.plots import _latency_plot, latency_log_scale

    arts = _latency_artifacts()
    assert latency_log_scale(arts) and not latency_log_scale(arts[:2])
    fig = Figure(figsize=(8.0, 2.5), dpi=100, layout="constrained")
    _latency_plot(arts)(fig)
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    bars = ax.patches[:3]
    # every bar readable: the 0.3 ms ones take a visible share of the axis, not a pixel beside 130 ms
    axis_px = ax.get_window_extent().width
    assert all(b.get_window_extent().width > 0.1 * axis_px for b in bars)
    # coloured by runtime, not by gate result: passed and failed LiteRT alike, Core ML apart
    colours = [b.get_facecolor() for b in bars]
    assert colours[0] == colours[1] != colours[2]


def test_layer_charts_once_per_set_of_figures():
    """The int8 ONNX rewritten from the int8 TFLite carries the TFLite's per-layer figures: one chart, for both."""
    r = make_report()
    onnx = r.artifacts[1]
    twin = ArtifactResult(path="out/model_int8.tflite", format="tflite", precision="int8", runtime="litert",
                          status=Status.PASSED, layer_sqnr=dict(onnx.layer_sqnr))
    r.artifacts.append(twin)
    html = to_html(r)
    titles = re.findall(r'<h3 class="layer-chart">(.*?)</h3>', html)
    assert titles == ["onnx int8 (onnxruntime), tflite int8 (litert)"]
    assert html.count('alt="per-layer SQNR of') == 1
    twin.layer_sqnr = {**onnx.layer_sqnr, "logits": 12.0}  # figures of its own: a chart of its own
    assert re.findall(r'<h3 class="layer-chart">(.*?)</h3>', to_html(r)) == ["onnx int8 (onnxruntime)",
                                                                                "tflite int8 (litert)"]


def test_layer_names_lose_their_common_prefix():
    from edgeship.validate.reports.plots import _layer_plot, shorten_middle, strip_common_prefix

    coreml = ["functional_1_mobilenetv2_1_00_160_Conv1_relu", "functional_1_mobilenetv2_1_00_160_block_1_expand",
              "functional_1_mobilenetv2_1_00_160_block_16_project_BN", "functional_1_mobilenetv2_1_00_160_out_relu"]
    names, prefix = strip_common_prefix(coreml)
    assert prefix == "functional_1_mobilenetv2_1_00_160_"
    assert names == ["Conv1_relu", "block_1_expand", "block_16_project_BN", "out_relu"]
    # cut at a separator only, never inside a word, and no name left empty; a short common start is kept
    assert strip_common_prefix(["conv_a", "conv_b"]) == (["conv_a", "conv_b"], "")
    assert strip_common_prefix(["mobilenet_block", "mobilenet_blocks"])[0] == ["block", "blocks"]
    # a scope before a word: the TFLite's "mobilenetv2/block_1_expand/Conv2D" keeps its block
    assert strip_common_prefix(["network/stage_1/a", "network/stage_1"])[0] == ["stage_1/a", "stage_1"]
    assert strip_common_prefix(["model/conv_a", "model/conv_b"]) == (["model/conv_a", "model/conv_b"], "")
    assert strip_common_prefix(["only_one_layer_name"]) == (["only_one_layer_name"], "")
    # the prefix most names share, as Core ML's layers beside the few its converter added ("conv_0", "Identity")
    added = [*coreml, "conv_0", "Identity"]
    assert strip_common_prefix(added) == ([*names, "conv_0", "Identity"], "functional_1_mobilenetv2_1_00_160_")
    assert strip_common_prefix(["network_a/x", "network_b/y", "conv_0", "Identity", "add"])[1] == ""  # 2 of 5
    short = shorten_middle("block_16_project_BN_FusedBatchNormV3_quantized", 20)
    assert len(short) == 20 and short.startswith("block_16_") and short.endswith("_quantized")
    # the chart draws the stripped names and its caption says what was stripped
    a = ArtifactResult(path="m.mlpackage", format="coreml", precision="w8", runtime="coremltools",
                       status=Status.PASSED, layer_sqnr={n: 30.0 + i for i, n in enumerate(coreml)})
    from matplotlib.figure import Figure

    draw, size, caption = _layer_plot([a])
    assert caption.endswith("; functional_1_mobilenetv2_1_00_160_ left out of the names that start with it")
    fig = Figure(figsize=size)
    draw(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    # the prefix of every layer, not of the 40 lowest drawn (which may all be blocks): "block_" stays
    many = {f"mobilenetv2_0_35_96_1_block_{i}_project_BN": 20.0 + i for i in range(1, 41)}
    many |= {"mobilenetv2_0_35_96_1_bn_Conv1": 90.0, "mobilenetv2_0_35_96_1_out_relu": 95.0, "conv_0": 99.0}
    a.layer_sqnr = many
    draw, size, caption = _layer_plot([a])
    fig = Figure(figsize=size)
    draw(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 40 and labels[0] == "block_1_project_BN" and "mobilenetv2_0_35_96_1_ left out" in caption


# ------------------------------------------------------------------------------------------------ JUnit
def _cases(root: ET.Element) -> dict[tuple[str, str], ET.Element]:
    return {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def test_junit_counts_and_layout(report):
    root = ET.fromstring(to_junit(report).encode("utf-8"))
    suites = list(root.iter("testsuite"))
    assert len(suites) == 1 and suites[0].get("name") == "edgeship"
    suite = suites[0]
    # tflite fp32: runs + 3 gates; onnx int8: runs + 3 gates (2 missed); coreml: runs (skipped); corrupt: runs
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("10", "3", "1")
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("10", "3", "1")
    cases = _cases(suite)
    assert len(cases) == 10
    assert sum(1 for c in cases.values() if c.find("failure") is not None) == 3
    assert sum(1 for c in cases.values() if c.find("skipped") is not None) == 1

    gate = cases[("edgeship.onnx.int8", "top1_agreement")].find("failure")
    assert gate.get("message") == _gates_int8()[0].describe()
    assert cases[("edgeship.onnx.int8", "latency_p50_ms")].find("failure") is None
    assert cases[("edgeship.onnx.int8", "runs")].find("failure") is None  # it ran; its gates failed
    assert all(c.find("failure") is None for (cls, _), c in cases.items() if cls == "edgeship.tflite.fp32")

    coreml = cases[("edgeship.coreml.fp16", "runs")]
    assert coreml.find("skipped").get("message") == SKIP_REASON
    assert coreml.find("failure") is None and coreml.find("error") is None

    corrupt = cases[("edgeship.tflite.int8", "runs")].find("failure")
    assert corrupt is not None and "bad magic" in corrupt.get("message") and "\x1b" not in corrupt.get("message")


def test_junit_machine_properties(report):
    suite = ET.fromstring(to_junit(report).encode("utf-8")).find("testsuite")
    assert suite.find("properties") is suite[0]  # the standard place: first child of the testsuite
    props = {p.get("name"): p.get("value") for p in suite.find("properties").iter("property")}
    assert props["machine.cpu_model"] == MACHINE["cpu_model"]  # ElementTree escapes it
    assert props["machine.isa"].split(", ") == MACHINE["isa"]
    assert props["machine.int8_kernel_family"] == "x86 AMX"
    assert props["machine.os"] == MACHINE["os"] and props["machine.python"] == "3.11.9"
    assert props["machine.cores"] == "112" and props["machine.architecture"] == "x86_64"
    assert {k: v for k, v in props.items() if k.startswith("version.")} == {
        "version.onnxruntime": "1.31.1", "version.ai-edge-litert": "2.3.0", "version.coremltools": "not installed"}
    assert props["edgeship_version"] == "0.1.0"


def test_junit_required_format_skip_fails():
    r = make_report(required=("tflite", "coreml"))
    root = ET.fromstring(to_junit(r))
    coreml = _cases(root)[("edgeship.coreml.fp16", "runs")]
    assert coreml.find("skipped") is None and SKIP_REASON in coreml.find("failure").get("message")
    assert root.get("failures") == "4" and root.get("skipped") == "0"
    assert "skipped (required)" in to_markdown(r) and "required format" in summary_table(r)


def test_junit_passing_report_and_duplicate_classnames():
    r = make_report()
    first = r.artifacts[0]
    twin = ArtifactResult(path="out/model.tflite", format="tflite", precision="fp32", runtime="onnx.via", status=
                          Status.PASSED, gates=_gates_fp32())
    r.artifacts = [first, twin]
    assert r.passed
    root = ET.fromstring(to_junit(r))
    assert root.get("failures") == "0" and root.get("skipped") == "0" and root.get("tests") == "8"
    assert {c.get("classname") for c in root.iter("testcase")} == {"edgeship.tflite.fp32.litert",
                                                                   "edgeship.tflite.fp32.onnx_via"}
    assert to_markdown(r).startswith("## edgeship validation: PASSED")


# ------------------------------------------------------------------------------------------------ terminal
def test_summary_table(report):
    table = summary_table(report)
    lines = table.splitlines()
    assert all(len(l) <= 120 for l in lines), max(lines, key=len)
    assert lines[0].split()[:4] == ["format", "precision", "runtime", "status"]
    assert "skipped" in table and SKIP_REASON in table and "FAILED" in table
    assert "inf dB" in table and "13.45 MB" in table and "1.23 ms" in table and "100.0 %" in table
    assert "\x1b" not in table
    assert lines[-1] == "FAILED: 1 passed, 2 failed, 1 skipped"
    # a very long reason is wrapped, not allowed to widen the table
    r = make_report()
    r.artifacts[3].reason = "x" * 500
    assert all(len(l) <= 120 for l in summary_table(r).splitlines())


# ------------------------------------------------------------------------------------------------ files
def test_write_reports(tmp_path, report):
    out = tmp_path / "reports" / "nested"
    paths = write_reports(report, out)
    assert set(paths) == {"json", "md", "html", "junit"}
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json", "report.md"]
    assert json.loads(paths["json"].read_text("utf-8"))["passed"] is False
    assert paths["json"].read_text("utf-8") == to_json(report) + "\n"
    ET.parse(paths["junit"])
    assert "&lt;script&gt;" in paths["html"].read_text("utf-8")


def test_empty_report_writes_everything(tmp_path):
    r = Report(reference={}, data={}, preprocessing={}, labels=[], artifacts=[])
    paths = write_reports(r, tmp_path)
    assert ET.parse(paths["junit"]).getroot().get("tests") == "0"
    assert "No artifacts" in paths["md"].read_text("utf-8")
    assert "<img" not in paths["html"].read_text("utf-8")
    assert summary_table(r).splitlines()[-1].startswith("PASSED")


def test_schema_doc_covers_every_key(report):
    """docs/report-schema.md documents every key report.json has, and its example is valid JSON."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-schema.md").read_text("utf-8")
    d = json.loads(to_json(report))
    a = d["artifacts"][1]
    keys = set(d) | set(a) | set(a["metrics"]) | set(a["latency_ms"]) | set(a["gates"][0]) | set(a["flips"][0])
    keys |= set(d["reference"]) | set(d["data"]) | set(d["preprocessing"]) | set(d["machine"])
    assert not {k for k in keys if f"`{k}`" not in doc}
    example = json.loads(re.search(r"```json\n(.*?)\n```", doc, re.S).group(1))
    assert example["schema_version"] == 2 and example["passed"] is False
    assert list(example) == list(d) and example["machine"].keys() == d["machine"].keys()
    # every kernel family is documented with its instruction
    from edgeship.machine import KernelFamily

    assert not [f for f in KernelFamily if f'| `"{f.value}"` |' not in doc]
