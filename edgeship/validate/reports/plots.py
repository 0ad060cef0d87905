"""The plots of report.html, drawn with matplotlib (imported only here, lazily) and inlined as base64 PNG: latency
per artifact, the per-sample error distribution, the per-layer SQNR of quantised files."""

from __future__ import annotations

import base64
import io
import math
import os
import re
from typing import Any, Callable

from edgeship.validate.reports.common import LAYER_PLOT_MAX, _finite, _h, _one_line, log
from edgeship.validate.reports.markdown import truncate
from edgeship.validate.results import ArtifactResult, Status

_STATUS_COLOURS = {Status.PASSED: "#2da44e", Status.FAILED: "#cf222e", Status.SKIPPED: "#8c959f"}


def _img(b64_png: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="data:image/png;base64,{b64_png}" alt="{_h(alt)}">'


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
    return truncate(_one_line(text), width).replace("$", r"\$")


#: Bars of one runtime share a colour (the latency chart says which runtime ran, not whether a gate was met)
_RUNTIME_PALETTE = ("#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#57606a")
#: Above this ratio of the slowest p50 to the fastest, the latency axis is logarithmic: the NumPy Core ML
#: reference (tens of ms) and LiteRT/ONNX Runtime (tenths of a ms) on one linear axis leave the fast bars invisible
LATENCY_LOG_RATIO = 20.0


def runtime_colours(artifacts: list[ArtifactResult]) -> dict[str, str]:
    """One colour per runtime, in first-seen order."""
    runtimes = list(dict.fromkeys(str(a.runtime) for a in artifacts))
    return {r: _RUNTIME_PALETTE[i % len(_RUNTIME_PALETTE)] for i, r in enumerate(runtimes)}


def latency_log_scale(artifacts: list[ArtifactResult]) -> bool:
    """Whether the latency chart needs a log axis: the timed artifacts' p50s span more than
    :data:`LATENCY_LOG_RATIO`."""
    p50 = [float(a.latency_ms.p50 or 0.0) for a in artifacts if _finite(a.latency_ms.p50)]
    positive = [v for v in p50 if v > 0]
    return bool(positive) and max(positive) / min(positive) > LATENCY_LOG_RATIO


def _latency_plot(artifacts: list[ArtifactResult]) -> Callable[[Any], None]:
    rows = [a for a in artifacts if _finite(a.latency_ms.p50)]
    colours = runtime_colours(rows)
    log_scale = latency_log_scale(rows)

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        y = list(range(len(rows)))
        p50 = [float(a.latency_ms.p50 or 0.0) for a in rows]  # rows: finite p50 only
        p90 = [float(a.latency_ms.p90 or 0.0) if _finite(a.latency_ms.p90) else v for a, v in zip(rows, p50)]
        p90 = [max(hi, lo) for lo, hi in zip(p50, p90)]
        positive = [v for v in p50 if v > 0]
        floor = min(positive) / 4 if log_scale else 0.0  # where the bars start on a log axis (it has no 0)
        starts = [floor] * len(rows)
        lengths = [max(v - floor, 0.0) for v in p50]
        whisker = [hi - lo for lo, hi in zip(p50, p90)]
        ax.barh(y, lengths, left=starts, xerr=[[0.0] * len(rows), whisker], capsize=4, height=0.6,
                color=[colours[str(a.runtime)] for a in rows], error_kw={"elinewidth": 1.2})
        ax.set_yticks(y, [_axis_label(a.name) for a in rows])
        ax.invert_yaxis()
        for yi, lo, hi in zip(y, p50, p90):
            ax.text(hi if hi > 0 else floor, yi, f"  {lo:.2f} ms", va="center", fontsize=8)
        right = max(p90) if rows else 1.0
        if log_scale:
            ax.set_xscale("log")
            ax.set_xlim(floor, right * 4)
        else:
            ax.set_xlim(0, right * 1.25 if right > 0 else 1.0)
        ax.set_xlabel("latency, ms (bar: p50, whisker: p90" + ("; log scale" if log_scale else "") + ")")
        ax.grid(axis="x", alpha=0.3, which="both" if log_scale else "major")

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


#: Where a layer name may be cut when its common prefix is stripped, strongest first: a scope ("/"), then a
#: fused name's parts, then a word (no name is cut inside a word)
_NAME_SEPARATORS = ("/", ";:", "_.-")
#: A shorter common prefix ("conv_") still says something about the layer: only longer ones are stripped
MIN_STRIPPED_PREFIX = 8
#: The share of the names a prefix must start to be stripped: the network's own layers, not the few the converter
#: added ("conv_0", "Identity" after Core ML's ``mobilenetv2_0_35_96_1_...``)
MIN_PREFIX_SHARE = 0.5


def _first_word(name: str) -> str:
    return re.split(r"[/;:_.\-]", name, maxsplit=1)[0]


def strip_common_prefix(names: list[str]) -> tuple[list[str], str]:
    """``names`` without the prefix that most of them share, and that prefix ("" when there is none worth
    stripping). The prefix is that of the largest group of names with the same first word, when the group holds
    :data:`MIN_PREFIX_SHARE` of the names or more; names outside it are kept whole. The cut is after the last
    separator of the strongest kind in the prefix (a scope "/" before a word "_"), when it leaves a prefix of
    :data:`MIN_STRIPPED_PREFIX` characters or more: no name loses part of a word, none becomes empty. Core ML
    names every layer ``functional_1_mobilenetv2_1_00_160_...``: without it, the part that tells the layers apart
    is what is left."""
    if len(names) < 2:
        return list(names), ""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_first_word(n), []).append(n)
    group = max(groups.values(), key=len)
    if len(group) < 2 or len(group) < MIN_PREFIX_SHARE * len(names):
        return list(names), ""
    common = os.path.commonprefix(group)[: min(len(n) for n in group) - 1]  # each name keeps a character
    for separators in _NAME_SEPARATORS:
        cut = max((i + 1 for i, c in enumerate(common) if c in separators), default=0)
        if cut >= MIN_STRIPPED_PREFIX:
            prefix = common[:cut]
            return [n[cut:] if n.startswith(prefix) else n for n in names], prefix
        if cut:  # a shorter scope ("model/"): what follows it is one word, to keep
            break
    return list(names), ""


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by an ellipsis in the middle: a layer name's start (its block) and its
    end (the op) are what tell it apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _layer_rows(layer_sqnr: dict[str, float]) -> tuple[list[tuple[str, float]], str]:
    """The layers to draw and a caption. Infinite SQNR (a bit-exact layer) is drawn capped; NaN is dropped."""
    items = [(str(k), float(v)) for k, v in layer_sqnr.items() if v is not None and not math.isnan(float(v))]
    if len(items) <= LAYER_PLOT_MAX:
        return items, f"{len(items)} layers, in network order"
    lowest = sorted(items, key=lambda kv: kv[1])[:LAYER_PLOT_MAX]
    return lowest, f"the {LAYER_PLOT_MAX} lowest of {len(items)} layers"


def _layer_key(layer_sqnr: dict[str, float]) -> tuple[tuple[str, str], ...]:
    """The per-layer figures as a comparable key (NaN equal to NaN)."""
    return tuple((str(k), repr(float(v)) if v is not None else "None") for k, v in layer_sqnr.items())


def layer_groups(artifacts: list[ArtifactResult]) -> list[list[ArtifactResult]]:
    """The artifacts with a per-layer SQNR, grouped by identical figures, in first-seen order: the int8 ONNX
    rewritten from the int8 TFLite carries the TFLite's per-layer report, and is drawn once with it."""
    groups: dict[tuple[tuple[str, str], ...], list[ArtifactResult]] = {}
    for a in artifacts:
        if a.layer_sqnr:
            groups.setdefault(_layer_key(a.layer_sqnr), []).append(a)
    return list(groups.values())


def layer_title(group: list[ArtifactResult]) -> str:
    """The artifacts a per-layer chart is for: ``"tflite int8 (litert), onnx int8 (onnxruntime)"``."""
    return ", ".join(a.name for a in group)


def _layer_plot(group: list[ArtifactResult]) -> tuple[Callable[[Any], None], tuple[float, float], str]:
    """The per-layer SQNR chart of one group of :func:`layer_groups`, its figure size, and its caption (which says
    the prefix stripped from the layer names)."""
    layers = group[0].layer_sqnr or {}
    rows, caption = _layer_rows(layers)
    # the prefix of every layer's name, not of the drawn ones only: the lowest 40 may all be "..._block_N_..."
    _, prefix = strip_common_prefix([str(k) for k in layers])
    labels = [k[len(prefix):] if prefix and k.startswith(prefix) else k for k, _ in rows]
    if prefix:
        caption += f"; {_one_line(prefix)} left out of the names that start with it"

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        finite = [v for _, v in rows if math.isfinite(v)]
        cap = (max(finite) if finite else 0.0) + 10.0
        values = [v if math.isfinite(v) else (cap if v > 0 else 0.0) for _, v in rows]
        y = list(range(len(rows)))
        ax.barh(y, values, height=0.7, color="#0969da")
        ax.set_yticks(y, [shorten_middle(_axis_label(k, 10_000), 44) for k in labels], fontsize=7)
        ax.invert_yaxis()
        for yi, (_, v), shown in zip(y, rows, values):
            if not math.isfinite(v):
                ax.text(shown, yi, " inf", va="center", fontsize=7)
        ax.set_xlabel("SQNR, dB (higher is better)")
        ax.grid(axis="x", alpha=0.3)

    height = min(1.2 + 0.17 * max(len(rows), 1), 10.0)
    return draw, (8.0, height), caption
