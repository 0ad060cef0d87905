"""The NumPy ML Program reference executor's speed beside ONNX Runtime's, on one model, in one run.

    .venv/bin/python scripts/bench_mlprogram.py [--model mobilenet_v2_1.0_224] [--threads 1] [--iterations 30]
                                                [--precision fp32]

Exports the model (a registry name, random init) to a Core ML ``.mlpackage`` (``--precision``) and an fp32 ONNX
file in a temporary directory, then times a batch-1 forward pass of each, the two alternating in short rounds
(so both see the same background load): the executor's ``MLProgram.execute`` and a bare ``InferenceSession.run``.
``--threads`` is given to both (ORT's intra-op threads; OpenBLAS's threads, through threadpoolctl). Prints the
medians and the ratio (executor / ORT).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeship._tf import quiet_environment  # noqa: E402

quiet_environment()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2_1.0_224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    args = parser.parse_args()

    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from edgeship.export import export
    from edgeship.models.loading import load_model
    from edgeship.runtimes.mlprogram import MLProgram

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(args.model)
        result = export(loaded=loaded, formats=["coreml", "onnx"], precisions=[args.precision, "fp32"],
                        out=Path(tmp), progress=False)
        mlpackage = next(p for p in result.paths if p.suffix == ".mlpackage")
        onnx_path = next(p for p in result.paths if p.suffix == ".onnx")
        program = MLProgram(mlpackage)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        h, w, _ = loaded.spec.input_shape
        pixels = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        feed_ml = {program.inputs[0].name: pixels}
        feed_ort = {sess.get_inputs()[0].name: loaded.spec.preprocessing.apply(pixels).astype(np.float32)}

        def timed(fn) -> float:
            times = []
            for _ in range(args.iterations):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e3

        ml, rt = [], []
        with threadpool_limits(limits=args.threads, user_api="blas"):
            for _ in range(3):  # warm-up
                program.execute(feed_ml)
                sess.run(None, feed_ort)
            for _ in range(args.rounds):
                ml.append(timed(lambda: program.execute(feed_ml)))
                rt.append(timed(lambda: sess.run(None, feed_ort)))
        ml_ms, rt_ms = statistics.median(ml), statistics.median(rt)
        print(f"model {args.model} ({h}x{w}, batch 1), threads {args.threads}, {args.rounds} rounds x "
              f"{args.iterations} iterations")
        print(f"  NumPy ML Program executor ({args.precision} .mlpackage): {ml_ms:8.2f} ms "
              f"(rounds {min(ml):.2f}..{max(ml):.2f})")
        print(f"  ONNX Runtime (fp32 .onnx):                {rt_ms:8.2f} ms (rounds {min(rt):.2f}..{max(rt):.2f})")
        print(f"  ratio executor / ORT: {ml_ms / rt_ms:.1f}x")


if __name__ == "__main__":
    main()
