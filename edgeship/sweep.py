"""``edgeship sweep``: a grid of MobileNet variants (family x width alpha x resolution rho) and precisions, one Ray
task per variant, one table.

Each task runs the same pipeline as ``edgeship run`` (:func:`edgeship.pipeline.run`: export, quantise, validate) on
one variant from the registry (:mod:`edgeship.models.registry`; built with random weights, nothing is downloaded)
into ``OUT/variants/<name>``, and returns a row per artifact: multiply-adds and parameters (counted as the
MobileNet papers count them, :mod:`edgeship.models.catalog`), size on disk, latency p50 at ``threads`` threads, and
with ``data`` given, top-1 agreement and SQNR against the variant's own float model (random weights: agreement says
how the conversion behaves, not how accurate a trained model would be). Without data the variants are fed
``SYNTH_IMAGES`` demo images resized to their resolution (for calibration and latency only; agreement is not
reported).

Output (``OUT``): ``sweep.json``, ``sweep.md``, ``sweep.html`` (the table and the plot) and ``sweep.png``: latency
p50 against top-1 agreement when data were given, else against multiply-adds. Each is written under a temporary name
and renamed when complete. A task whose worker dies is re-run (``max_retries``); a variant that fails (e.g. a
converter error) is a row with its reason, not a failed sweep; Ctrl-C cancels the tasks in flight.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeship.errors import UserError
from edgeship.formats import FORMATS

#: The precisions a variant exports (the rest it quantises): every format's float precisions
FLOAT_PRECISIONS = tuple(dict.fromkeys(p.value for spec in FORMATS.values() for p in spec.float_precisions))
SYNTH_IMAGES = 16


@dataclass
class SweepConfig:
    families: list[str] = field(default_factory=lambda: ["mobilenet_v2"])
    alphas: list[float] = field(default_factory=lambda: [0.35, 0.5])
    resolutions: list[int] = field(default_factory=lambda: [96, 128])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    formats: list[str] = field(default_factory=lambda: ["tflite"])
    data: str | None = None
    num_samples: int = 32  # calibration samples
    iterations: int = 20
    threads: int = 1
    out: Path = Path("edgeship-sweep")
    address: str | None = None
    workers: int | None = None
    max_retries: int = 3


def variants(config: SweepConfig) -> list[str]:
    """The registry names of the grid, in grid order; combinations the registry lacks are refused with the list."""
    from edgeship.models.registry import VARIANTS, Variant

    names: list[str] = []
    missing: list[str] = []
    for family in config.families:
        minimal = family.endswith("_minimalistic")
        base = family.removesuffix("_minimalistic")
        for a in config.alphas:
            for r in config.resolutions:
                name = Variant(base, float(a), int(r), minimal).name
                (names if name in VARIANTS else missing).append(name)
    if missing and not names:
        raise UserError(f"no variant of the grid exists ({', '.join(missing[:4])}...): 'edgeship models' lists them")
    return names


def _synth_data(out: Path, resolution: int) -> str:
    """SYNTH_IMAGES demo held-out images resized to ``resolution``, as an unlabelled uint8 .npy (made once)."""
    import numpy as np
    from PIL import Image

    from edgeship.data import image_files, read_image
    from edgeship.fileio import atomic_path
    from edgeship.models.loading import DEMO_DIR

    path = out / "_data" / f"demo_{resolution}.npy"
    if not path.exists():
        files = image_files(DEMO_DIR / "heldout")[:: 360 // SYNTH_IMAGES][:SYNTH_IMAGES]
        images = np.stack([np.asarray(Image.fromarray(read_image(f, (96, 96))).resize(
            (resolution, resolution), Image.Resampling.BILINEAR)) for f in files])
        with atomic_path(path) as tmp:
            np.save(tmp, images)
    return str(path)


def run_variant(name: str, config: SweepConfig, data: str) -> list[dict[str, Any]]:
    """One variant through ``edgeship run``'s pipeline; a row per artifact (or one row with the failure)."""
    from edgeship._tf import quiet_environment

    quiet_environment()
    from edgeship.models.catalog import describe_models
    from edgeship.models.registry import VARIANTS
    from edgeship.export.options import ExportOptions
    from edgeship.pipeline import QuantizeTable, RunConfig, run
    from edgeship.validate.options import ValidateOptions

    v = VARIANTS[name]
    head = {"variant": name, "family": v.full_family, "alpha": v.alpha, "resolution": v.resolution}
    start = time.perf_counter()
    try:
        counts = describe_models([name], progress=False)[0]
        head |= {"macs": counts["macs"], "params": counts["params"]}
        floats = [p for p in config.precisions if p in FLOAT_PRECISIONS]
        quant = [p for p in config.precisions if p not in FLOAT_PRECISIONS]
        run_config = RunConfig(
            model=name, export=ExportOptions.of(formats=list(config.formats), precisions=floats or None),
            quantize=QuantizeTable(formats=[str(f) for f in config.formats] if quant else [],
                                   precisions=[str(q) for q in quant] or None,
                                   calibration=None if data is None else str(data), num_samples=config.num_samples),
            out=config.out / "variants" / name,
            validate=ValidateOptions(data=None if data is None else str(data), threads=config.threads,
                                     iterations=config.iterations, kernel_path_samples=0))
        report = run(run_config, echo=lambda _: None)
    except UserError as e:
        return [head | {"status": "failed", "reason": str(e)}]
    head["report"] = str(run_config.out / "report" / "report.html")
    rows = []
    for a in report.artifacts:
        row = head | {"format": a.format, "precision": a.precision, "runtime": a.runtime,
                      "size_bytes": a.size_bytes, "p50_ms": a.latency_ms.p50, "status": str(a.status),
                      "seconds": time.perf_counter() - start}
        if config.data is not None:
            row |= {"top1_agreement": a.metrics.top1_agreement, "sqnr_db": a.metrics.sqnr_db,
                    "accuracy_top1": a.metrics.accuracy_top1}
        if a.status.value == "skipped" or (a.status.value == "failed" and a.metrics.top1_agreement is None):
            row["reason"] = a.reason
        rows.append(row)
    return rows


def sweep(config: SweepConfig, progress: bool = True, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the grid on Ray (``config.address``, else a local Ray for the sweep) and write the table and the plot
    into ``config.out``; returns the rows."""
    from edgeship.progress import counted, progress as progress_bar

    from edgeship.validate.ray_executor import import_ray

    names = variants(config)
    if config.data is not None and not Path(config.data).exists():
        raise UserError(f"data not found: {config.data}")
    ray = import_ray()
    config.out = Path(config.out).resolve()
    config.out.mkdir(parents=True, exist_ok=True)
    data = {n: config.data or _synth_data(config.out, int(n.rsplit("_", 1)[1])) for n in names}
    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(address=config.address, include_dashboard=False if not config.address else None,
                 num_cpus=None if config.address or config.workers is None else config.workers * config.threads,
                 logging_level=logging.ERROR, log_to_driver=False)
    task = ray.remote(run_variant).options(num_cpus=config.threads, max_retries=config.max_retries,
                                           retry_exceptions=False)
    workers = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // config.threads)
    echo(f"edgeship sweep: {counted(len(names), 'variant')} x {', '.join(config.precisions)} on "
         f"{counted(workers, 'Ray worker')} -> {config.out}")
    rows: dict[str, list[dict[str, Any]]] = {}
    pending: dict[Any, str] = {}
    todo = list(names)
    bar = progress_bar(total=len(names), desc="sweep", unit="variant", enabled=progress)
    try:
        while todo or pending:
            while todo and len(pending) < workers:
                name = todo.pop(0)
                pending[task.remote(name, config, data[name])] = name
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                try:
                    rows[name] = ray.get(ref)
                except ray.exceptions.RayError as e:  # a bug or a worker lost beyond its retries: that variant
                    rows[name] = [{"variant": name, "status": "failed",
                                   "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}]
                bar.update(1)
    except BaseException:  # Ctrl-C: stop the variants in flight; a killed task leaves its temporary files behind
        for ref in pending:
            ray.cancel(ref, force=True)
        _remove_partials(config.out, [ref for ref in pending], ray)
        raise
    finally:
        bar.close()
        if started:
            ray.shutdown()
        _no_colour_reset_at_exit()
    table = [r for n in names for r in rows[n]]
    write_outputs(table, config)
    return table


def _no_colour_reset_at_exit() -> None:
    """Ray's bundled colorama (``colorama.init`` in its CLI logger) registers an exit hook that writes ``ESC[0m``
    to stdout; edgeship prints no colour, so the hook only left a stray escape after the table: unregistered."""
    import atexit
    import sys

    for name in ("colorama.initialise", "ray.thirdparty_files.colorama.initialise"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "reset_all"):
            atexit.unregister(module.reset_all)


def failed_variants(rows: list[dict[str, Any]]) -> list[str]:
    """The variants with a failed row (a conversion error, a gate), in table order."""
    return list(dict.fromkeys(r["variant"] for r in rows if r.get("status") == "failed"))


def text_table(rows: list[dict[str, Any]]) -> str:
    """The sweep table as aligned plain text for a terminal or a log (sweep.md holds the Markdown), each failed
    row's reason indented below it."""
    cols = [(k, t) for k, t in COLUMNS if any(k in r for r in rows)]
    cells = [[_cell(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, (_, t) in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line([t for _, t in cols]), line(["-" * w for w in widths])]
    for r, c in zip(rows, cells):
        out.append(line(c))
        if r.get("reason"):
            out.append(f"    reason: {' '.join(str(r['reason']).split())}")
    return "\n".join(out)


def _remove_partials(out: Path, cancelled: list[Any], ray: Any) -> None:
    """After cancelling: wait (briefly) for the killed tasks to end, then remove the temporary files
    (``.<name>.partial-<pid><suffix>``, :func:`edgeship.fileio.atomic_path`) they were writing."""
    import shutil

    if cancelled:
        ray.wait(cancelled, num_returns=len(cancelled), timeout=10)
    for tmp in out.rglob(".*.partial-*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


COLUMNS = [("variant", "variant"), ("format", "format"), ("precision", "precision"), ("macs", "MACs (M)"),
           ("params", "params (k)"), ("size_bytes", "size (MB)"), ("p50_ms", "p50 (ms)"),
           ("top1_agreement", "top-1 agreement"), ("sqnr_db", "SQNR (dB)"), ("status", "status")]


#: How each column of the sweep table is shown (units: M multiply-adds, k parameters, MB, ms, %, dB)
_CELL_FORMATS = {"macs": lambda v: f"{v / 1e6:.1f}", "params": lambda v: f"{v / 1e3:.0f}",
                 "size_bytes": lambda v: f"{v / 1e6:.2f}", "p50_ms": lambda v: f"{v:.2f}",
                 "top1_agreement": lambda v: f"{v:.1%}", "sqnr_db": lambda v: f"{v:.1f}"}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    return _CELL_FORMATS.get(key, str)(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = [(k, t) for k, t in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    notes = [f"- {r['variant']} {r.get('format', '')} {r.get('precision', '')}: {r['reason']}" for r in rows
             if r.get("reason")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_png(rows: list[dict[str, Any]]) -> bytes:
    """Latency p50 (x) against top-1 agreement, or multiply-adds when no agreement was measured (y), one marker
    per precision, each point labelled with its variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get("p50_ms") is not None]
    accuracy = any(r.get("top1_agreement") is not None for r in points)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, key in enumerate(sorted({(r["format"], r["precision"]) for r in points})):
        mine = [r for r in points if (r["format"], r["precision"]) == key]
        ys = [(r.get("top1_agreement") or 0) * 100 if accuracy else r["macs"] / 1e6 for r in mine]
        ax.scatter([r["p50_ms"] for r in mine], ys, marker="osD^v<>"[i % 7], label=f"{key[0]} {key[1]}")
        for r, y in zip(mine, ys):
            ax.annotate(f"{r['alpha']:g}/{r['resolution']}", (r["p50_ms"], y), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("latency p50 (ms, batch 1)")
    ax.set_ylabel("top-1 agreement with float (%)" if accuracy else "multiply-adds (M)")
    ax.set_title("edgeship sweep: " + ("agreement" if accuracy else "MACs") + " vs latency (labels: alpha/resolution)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(rows: list[dict[str, Any]], config: SweepConfig) -> None:
    import html

    from edgeship.fileio import write_bytes_atomic

    out = Path(config.out)
    png = plot_png(rows)
    md = markdown(rows)
    setup = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    write_bytes_atomic(out / "sweep.json", json.dumps({"config": setup, "rows": rows}, indent=2).encode())
    write_bytes_atomic(out / "sweep.md", ("# edgeship sweep\n\n" + md + "\n![latency plot](sweep.png)\n").encode())
    write_bytes_atomic(out / "sweep.png", png)
    cols = [(k, t) for k, t in COLUMNS if any(k in r for r in rows)]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r.get(k)))}</td>" for k, _ in cols) + "</tr>"
                   for r in rows)
    page = (f"<!doctype html><meta charset=utf-8><title>edgeship sweep</title><h1>edgeship sweep</h1>"
            f"<table border=1 cellpadding=4><tr>{''.join(f'<th>{html.escape(t)}</th>' for _, t in cols)}</tr>{body}"
            f"</table><p><img alt='latency plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    write_bytes_atomic(out / "sweep.html", page.encode())
