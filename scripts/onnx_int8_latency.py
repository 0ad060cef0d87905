"""Is the int8 ONNX as fast in ONNX Runtime as the int8 TFLite in LiteRT, and does it answer the same?

For each model: the int8 TFLite (edgeship's quantiser: fixed ReLU6 ranges, per-channel weights, uint8 I/O) and
the int8 ONNX rewritten from it (``edgeship.quantize.formats.onnx``). One interleaved run per thread count: rounds
alternate a block of LiteRT ``invoke()`` calls and a block of ORT ``run()`` calls (the order flips every round),
same uint8 input, each call timed with ``time.perf_counter``; the table gives the medians and ORT/LiteRT
(target <= 1.1). Then the op types of the graph ORT executes (``optimized_model_filepath``, ORT_ENABLE_ALL) with
what is left unfused, and, for the demo, the fraction of uint8 output values equal to LiteRT's (XNNPACK) on every
held-out image.

    .venv/bin/python scripts/onnx_int8_latency.py [--models mobilenet_v2_1.0_224,demo] [--threads 1,2]
        [--rounds 30] [--iterations 20] [--tf2onnx] [--encodings u8u8,u8s8]
        [--ort-config session.qdqisint8allowed=1 ...]

Registry models are random-init (latency does not need trained weights), calibrated on a few demo images resized
to their resolution.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeship._tf import quiet_environment  # noqa: E402

quiet_environment()

from edgeship.export.common import ModelInfo  # noqa: E402
from edgeship.models.loading import DEMO_DIR, load_model  # noqa: E402
from edgeship.quantize.calibration import load_calibration  # noqa: E402
from edgeship.quantize.formats.onnx import onnx_from_tflite  # noqa: E402
from edgeship.quantize.formats.onnx_qdq import fusion_report, ort_optimized_graph  # noqa: E402
from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated  # noqa: E402


def build(name: str, samples: int, workdir: Path, tf2onnx: bool,
          encodings: tuple[str, ...] = ("u8u8",)) -> tuple[object, dict[str, Path]]:
    """(loaded model, {"tflite": path, "onnx": path (the first encoding), "onnx_<encoding>": path (the others)
    [, "onnx_tf2onnx": path]})."""
    loaded = load_model(None if name == "demo" else name)
    spec = loaded.spec
    demo_spec = load_model(None).spec if name != "demo" else spec
    cal = load_calibration(None, demo_spec, num_samples=samples, seed=0, warn=lambda m: None)
    images = cal.images
    if spec.input_shape[:2] != images.shape[1:3]:
        from PIL import Image

        h, w = spec.input_shape[:2]
        images = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR)) for im in images])
    int8 = quantize_calibrated(calibrate(loaded, spec.preprocessing.apply(images)), io_dtype="uint8",
                               input_range=spec.preprocessing.value_range)
    info = ModelInfo.default_for(spec.name, spec.num_classes)
    paths = {"tflite": workdir / f"{spec.name}_int8.tflite"}
    paths["tflite"].write_bytes(int8.model)
    for k, encoding in enumerate(encodings):
        key = "onnx" if k == 0 else f"onnx_{encoding}"
        paths[key] = workdir / f"{spec.name}_int8_{encoding}.onnx"
        paths[key].write_bytes(onnx_from_tflite(int8.model, loaded, info, portable=encoding == "u8u8",
                                                warn=lambda m: print(f"warning: {m}")))
    if tf2onnx:
        paths["onnx_tf2onnx"] = workdir / f"{spec.name}_int8_tf2onnx.onnx"
        paths["onnx_tf2onnx"].write_bytes(onnx_from_tflite(int8.model, loaded, info, converter="tf2onnx"))
    return loaded, paths


def interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    from edgeship._tf import silenced

    with silenced((2,)):
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    return interp


def session(path: Path, threads: int, config: dict[str, str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(paths: dict[str, Path], threads: int, rounds: int, iterations: int, warmup: int,
                config: dict[str, str]) -> dict[str, float]:
    """Median ms per call of every runtime, measured in alternating blocks within one run."""
    interp = interpreter(paths["tflite"], threads)
    detail = interp.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, size=tuple(detail["shape"]), dtype=np.uint8)
    interp.set_tensor(detail["index"], x)
    runs = {"litert": interp.invoke}
    for key in (k for k in paths if k.startswith("onnx")):
        sess = session(paths[key], threads, config)
        inp = sess.get_inputs()[0]
        feed = {inp.name: x if inp.shape[-1] == x.shape[-1] else np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        runs[key] = lambda s=sess, f=feed: s.run(None, f)
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            fn, bucket = runs[key], times[key]
            for _ in range(iterations):
                start = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def equal_outputs(loaded, paths: dict[str, Path]) -> tuple[float, int, float]:
    """(fraction of uint8 output values equal, values compared, top-1 agreement), ONNX vs LiteRT, held-out set."""
    from edgeship.data import load_image_folder
    from edgeship.numerics import quantize_values

    images = load_image_folder(DEMO_DIR / "heldout", loaded.spec.input_shape[:2], loaded.spec.labels).images
    interp = interpreter(paths["tflite"], 1)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zp = i["quantization"]
    x = quantize_values(loaded.spec.preprocessing.apply(images), np.uint8, scale, zp)
    sess = session(paths["onnx"], 1, {})
    name = sess.get_inputs()[0].name
    a, b = [], []
    for k in range(len(x)):
        interp.set_tensor(i["index"], x[k : k + 1])
        interp.invoke()
        a.append(interp.get_tensor(o["index"]).copy())
        b.append(sess.run(None, {name: x[k : k + 1]})[0])
    a, b = np.concatenate(a), np.concatenate(b)
    return float(np.mean(a == b)), int(a.size), float(np.mean(a.argmax(1) == b.argmax(1)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2_1.0_224,demo")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--samples", type=int, default=16, help="calibration images")
    ap.add_argument("--tf2onnx", action="store_true", help="also time tf2onnx.from_tflite's int8 ONNX")
    ap.add_argument("--encodings", default="u8u8",
                    help="int8 ONNX weight encodings to time side by side, the first is 'onnx': u8u8 (edgeship's "
                         "default, portable) and u8s8 (the TFLite's int8 weights; saturates on x86 without VNNI)")
    ap.add_argument("--ort-config", nargs="*", default=[], metavar="KEY=VALUE",
                    help="ORT session config entries, e.g. session.qdqisint8allowed=1")
    args = ap.parse_args(argv)
    config = dict(kv.split("=", 1) for kv in args.ort_config)
    threads = [int(t) for t in args.threads.split(",")]
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}; rounds {args.rounds} x {args.iterations} calls per runtime, interleaved"
          + (f"; ORT config {config}" if config else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            encodings = tuple(e.strip() for e in args.encodings.split(",") if e.strip())
            loaded, paths = build(name, args.samples, Path(tmp), args.tf2onnx, encodings)
            print(f"\n## {loaded.spec.name}\n")
            others = [k for k in paths if k.startswith("onnx")]
            head = "| threads | LiteRT int8 ms | " + " | ".join(f"ORT {k} ms | ratio" for k in others) + " |"
            print(head)
            print("|" + "---|" * (2 + 2 * len(others)))
            for t in threads:
                ms = interleaved(paths, t, args.rounds, args.iterations, args.warmup, config)
                cells = " | ".join(f"{ms[k]:.3f} | {ms[k] / ms['litert']:.2f}x" for k in others)
                print(f"| {t} | {ms['litert']:.3f} | {cells} |", flush=True)
            # The machine is shared: a load average above the cores this run uses means the figures are contended.
            print(f"\nload average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
            report = fusion_report(ort_optimized_graph(paths["onnx"]))
            ops = ", ".join(f"{k} {v}" for k, v in sorted(report["op_counts"].items(), key=lambda kv: -kv[1]))
            print(f"\nORT-optimised graph (ORT_ENABLE_ALL): {ops}")
            print(f"float Conv/MatMul/Gemm: {report['float_compute']}, Clip: {report['clips']}, "
                  f"Transpose/Clip between DQ and Q: {len(report['stranded'])}")
            if name == "demo":
                equal, count, top1 = equal_outputs(loaded, paths)
                print(f"held-out: {equal:.4%} of {count} uint8 output values equal to LiteRT's (XNNPACK); "
                      f"top-1 agreement {top1:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
