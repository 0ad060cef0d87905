"""Scaling of ``validate --executor ray`` from 1 to 2 workers on a 20,000-image set.

The set is synthesised from the demo's 360 held-out images by random crops (80-100 % of each side, resized back to
96x96, bilinear) and horizontal flips, seeded, and cached as one uint8 ``.npy`` (memory-mapped by every worker) in
``~/.cache/edgeship/ray_scaling``, with the demo's int8 TFLite (calibrated on 32 images). One local Ray cluster of
2 CPUs is started; the same validation (the Keras reference and the int8 TFLite, one runtime thread each, no second
kernel path) runs with 1 then 2 shard tasks in flight, shards of ``--shard-size`` images.

Figures: t1 and t2, the wall time of the sharded comparison (``report.executor["compare_seconds"]``: submit to
last shard merged; latency timing excluded), scaling efficiency t1 / (2 t2), and the driver's overhead per shard
(from submitting a shard to having its result, minus the seconds the task itself took in its worker: scheduling,
argument and result transfer). As a control of what the machine itself allowed, a pure-Python CPU loop runs in 1
then 2 processes before and after (its efficiency t1 / t2: 1.0 on two free cores). The load average (``os.getloadavg``) is printed before and after: on a shared
machine the figure is only as good as the idle time it got.

    .venv/bin/python scripts/ray_scaling.py [--count 20000] [--shard-size 1024]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from edgeship._tf import quiet_environment

quiet_environment()

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeship" / "ray_scaling"


def synthesise(count: int, seed: int = 0) -> Path:
    from PIL import Image

    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR
    from edgeship.models.spec import read_labels

    path = CACHE / f"demo_crops_{count}_{seed}.npy"
    if path.exists():
        return path
    base = load_image_folder(DEMO_DIR / "heldout", (96, 96), read_labels(DEMO_DIR / "labels.txt")).images
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(CACHE / f".{path.name}.partial", mode="w+", dtype=np.uint8,
                                    shape=(count, 96, 96, 3))
    for i in range(count):
        im = base[rng.integers(len(base))]
        side = int(rng.integers(77, 97))
        y, x = rng.integers(0, 97 - side, size=2)
        crop = Image.fromarray(im[y : y + side, x : x + side]).resize((96, 96), Image.Resampling.BILINEAR)
        a = np.asarray(crop)
        out[i] = a[:, ::-1] if rng.random() < 0.5 else a
    out.flush()
    del out
    os.replace(CACHE / f".{path.name}.partial", path)
    return path


def int8_tflite() -> Path:
    from edgeship.models.loading import load_model
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    path = CACHE / "demo_int8.tflite"
    if not path.exists():
        loaded = load_model()
        cal = load_calibration(None, loaded.spec, num_samples=32, seed=0)
        int8 = quantize_calibrated(calibrate(loaded, cal.inputs), io_dtype="uint8",
                                   input_range=loaded.spec.preprocessing.value_range, relu6_fixed=True)
        path.write_bytes(int8.model)
    return path


def _import_stack(_: int) -> int:
    quiet_environment()
    import ai_edge_litert.interpreter  # noqa: F401

    from edgeship.validate.ray_executor import pin_threads

    pin_threads(1)  # what each shard task does first (the reference held to one thread, like the runtimes)

    time.sleep(2)  # hold the CPU so the two calls land on two workers
    return os.getpid()


def _spin(n: int = 20_000_000) -> None:
    x = 0
    for i in range(n):
        x += i


def cpu_control() -> dict[str, float]:
    """The machine's own parallelism right now: a pure-Python CPU loop in 1 then 2 processes at once. On 2 idle
    cores both take the same time (control efficiency 1.0); shared with other work, the second process slows."""
    from multiprocessing import Process

    out = {}
    for n in (1, 2):
        start = time.perf_counter()
        procs = [Process(target=_spin) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        out[f"seconds_{n}"] = time.perf_counter() - start
    out["efficiency"] = out["seconds_1"] / out["seconds_2"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--shard-size", type=int, default=1024)
    args = ap.parse_args()
    import ray

    from edgeship.validate.pipeline import validate
    from edgeship.validate.ray_executor import RayExecutor

    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, artifact = synthesise(args.count), int8_tflite()
    print(f"data {data} ({args.count} images), artifact {artifact}, prepared in {time.perf_counter() - t0:.0f} s")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    _warm = ray.remote(_import_stack)
    results = {"count": args.count, "shard_size": args.shard_size, "load_before": os.getloadavg(),
               "cpu_control_before": cpu_control()}
    # warm two worker processes (TensorFlow and the runtimes imported once per process), so neither run pays it
    ray.get([_warm.options(num_cpus=1).remote(k) for k in range(2)])
    for workers in (1, 2):
        start = time.perf_counter()
        report = validate([artifact], data=data, iterations=20, progress=False, kernel_path_samples=0,
                          executor=RayExecutor(workers=workers, shard_size=args.shard_size))
        info = report.executor
        results[f"workers_{workers}"] = {
            "compare_seconds": info["compare_seconds"], "total_seconds": time.perf_counter() - start,
            "shards": info["shards"], "overhead_per_shard_s": info["overhead_per_shard_s"],
            "mean_shard_seconds": float(np.mean(info["shard_seconds"])),
            "top1_agreement": report.artifacts[0].metrics.top1_agreement, "load_after": os.getloadavg()}
        print(f"{workers} worker(s): {info['compare_seconds']:.1f} s for {info['shards']} shards "
              f"(driver overhead {info['overhead_per_shard_s'] * 1e3:.0f} ms/shard), load {os.getloadavg()}")
    ray.shutdown()
    t1, t2 = results["workers_1"]["compare_seconds"], results["workers_2"]["compare_seconds"]
    results["efficiency"] = t1 / (2 * t2)
    results["load_after"] = os.getloadavg()
    results["cpu_control_after"] = cpu_control()
    print(f"scaling efficiency t1 / (2 t2) = {t1:.1f} / (2 x {t2:.1f}) = {results['efficiency']:.2f}; "
          f"load average before {results['load_before']}, after {results['load_after']}")
    print("CPU control (a Python loop in 1 then 2 processes; 1.0 = two free cores): before "
          f"{results['cpu_control_before']['efficiency']:.2f}, after {results['cpu_control_after']['efficiency']:.2f}")
    (CACHE / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
