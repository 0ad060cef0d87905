"""Is the validator's latency figure the runtime's own speed? Compare its p50 with a bare loop on the same file.

For each artifact, rounds alternate between (A) ``edgeship.validate.latency.measure`` through the Runner
interface and (B) a bare loop — ``interpreter.invoke()`` for LiteRT, ``session.run()`` for ONNX Runtime — timing
each call with ``time.perf_counter``, same feed, same thread count, after the same warm-up. Prints the median of
each side's per-round p50 and the ratio A/B (target: <= 1.03).

    .venv/bin/python scripts/bench_harness.py [--model NAME] [--rounds 7] [--iterations 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeship.export import export  # noqa: E402
from edgeship.models.loading import load_model  # noqa: E402
from edgeship.types import Format  # noqa: E402
from edgeship.validate.latency import measure  # noqa: E402
from edgeship.runtimes import runner_for  # noqa: E402


def bare_litert(path: Path, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def bare_ort(path: Path, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="variant name (default: the demo model)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    loaded = load_model(args.model)
    out = Path(tempfile.mkdtemp(prefix="edgeship-harness-"))
    result = export(loaded=loaded, out=out, formats=["tflite", "onnx"], progress=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, *loaded.spec.input_shape), dtype=np.uint8)
    print(f"model {loaded.spec.name}, {args.rounds} interleaved rounds x {args.iterations} iterations, "
          f"{args.threads} thread(s)\n")
    print("| artifact | validator p50 (ms) | bare loop p50 (ms) | ratio |")
    print("|---|--:|--:|--:|")
    worst = 0.0
    for rec in result.manifest.artifacts:
        path = out / rec.path
        runner = runner_for(rec.format, path, loaded.spec.preprocessing, args.threads).open()
        feed = runner.feed(images)
        x = next(iter(feed.values()))
        bare = bare_litert if rec.format is Format.TFLITE else bare_ort
        a, b = [], []
        for round_ in range(args.rounds):  # alternate which side goes first, so drift favours neither
            sides = [lambda: a.append(measure(runner, feed, warmup=args.warmup, iterations=args.iterations)[0].p50),
                     lambda: b.append(bare(path, x, args.threads, args.warmup, args.iterations))]
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                side()
        ratio = statistics.median(a) / statistics.median(b)
        worst = max(worst, ratio)
        print(f"| {rec.format} {rec.precision} | {statistics.median(a):.3f} (min {min(a):.3f}, max {max(a):.3f}) | "
              f"{statistics.median(b):.3f} (min {min(b):.3f}, max {max(b):.3f}) | {ratio:.3f} |")
    print(f"\nharness_vs_bare_loop = {worst:.3f} (target <= 1.03): {'MET' if worst <= 1.03 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
