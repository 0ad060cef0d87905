"""The measuring half of scripts/bench.py: models, data and the peers' conversions; the child processes (the
pipeline, the bare converters, ``edgeship run`` on the demo), run and measured by :func:`spawn`; and the latency
loops (:class:`Bare` and :func:`measure_latency`). ``scripts/bench.py`` drives it and writes the report
(:mod:`bench_report`)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).with_name("bench.py")  # the children are started as `bench.py --child KIND`
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeship._tf import quiet_environment  # noqa: E402

quiet_environment()

V2, V1, DEMO = "mobilenet_v2_1.0_224", "mobilenet_v1_1.0_224", "demo"
QUICK_V2 = "mobilenet_v2_0.5_128"  # --quick: a small V2, to check the bench runs end to end
THREADS = (1, 2)
CHUNKS = 5  # A/B alternations per artifact per round
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# models, data, conversions (shared by the parent and the child processes)
# ---------------------------------------------------------------------------------------------------------------
def load(name: str, images: np.ndarray | None):
    from edgeship.models.loading import load_model

    loaded = load_model(None if name == DEMO else name)
    if name != DEMO and images is not None:
        reestimate_bn(loaded, images)
    return loaded


def reestimate_bn(loaded, images: np.ndarray) -> None:
    """BatchNorm moving statistics from ``images`` (momentum 0, one pass in training mode), as the tests do."""
    from edgeship._tf import keras

    k = keras()

    def layers(m):
        for layer in m.layers:
            yield from (layers(layer) if hasattr(layer, "layers") else [layer])

    bns = [b for b in layers(loaded.keras_model) if isinstance(b, k.layers.BatchNormalization)]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    loaded.keras_model(loaded.spec.preprocessing.apply(images[:32]), training=True)
    for b, m in zip(bns, saved):
        b.momentum = m


def random_images(n: int, side: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def calibration_inputs(loaded, data: str | None, n: int) -> np.ndarray:
    from edgeship.quantize.calibration import load_calibration

    return load_calibration(data, loaded.spec, num_samples=n, warn=lambda m: None).inputs.astype(np.float32)


def peer_tflite(loaded, x: np.ndarray | None) -> bytes:
    """TFLiteConverter's default path: fp32 (x None) or full-integer int8 (representative dataset,
    TFLITE_BUILTINS_INT8, uint8 I/O)."""
    from edgeship._tf import silenced, tf

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(loaded.keras_model)
    if x is not None:
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[i : i + 1]] for i in range(len(x)))
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = t.uint8
        conv.inference_output_type = t.uint8
    with silenced():
        return conv.convert()


def peer_tf2onnx(loaded, path: Path) -> None:
    """tf2onnx's default fp32 conversion of the Keras model (from_function, opset 17), no metadata."""
    from edgeship._tf import import_quietly, silenced, tf

    t = tf()
    tf2onnx = import_quietly("tf2onnx")
    h, w, c = loaded.spec.input_shape
    model = loaded.keras_model
    fn = t.function(lambda image: model(image, training=False))
    with silenced():
        proto, _ = tf2onnx.convert.from_function(
            fn, input_signature=[t.TensorSpec((None, h, w, c), t.float32, name=loaded.spec.input_name)], opset=17)
    path.write_bytes(proto.SerializeToString())


def peer_coreml(loaded, path: Path) -> None:
    """coremltools.convert of the Keras model's concrete function: ML Program, fp16 (its default), tensor input."""
    from edgeship._tf import import_quietly, silenced, tf

    t = tf()
    ct = import_quietly("coremltools")
    h, w, c = loaded.spec.input_shape
    model = loaded.keras_model
    fn = t.function(lambda image: model(image, training=False),
                    input_signature=[t.TensorSpec((1, h, w, c), t.float32, name="image")])
    with silenced():
        ml = ct.convert([fn.get_concrete_function()], source="tensorflow", convert_to="mlprogram",
                        minimum_deployment_target=ct.target.iOS16)
        ml.save(str(path))


def peer_ort_qdq(fp32_onnx: Path, x: np.ndarray, out: Path) -> None:
    """ONNX Runtime's default static quantisation: quant_pre_process, then quantize_static (QDQ, per-channel,
    QInt8 activations and weights, MinMax calibration) on the float ONNX."""
    from edgeship._tf import silenced
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(x[i : i + 1] for i in range(len(x)))

        def get_next(self):
            nxt = next(self.it, None)
            return None if nxt is None else {name: nxt}

    pre = out.with_suffix(".pre.onnx")
    with silenced():
        quant_pre_process(str(fp32_onnx), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    pre.unlink()


# ---------------------------------------------------------------------------------------------------------------
# child processes: the pipeline, the bare converters, edgeship run on the demo
# ---------------------------------------------------------------------------------------------------------------
def child_pipeline(cfg: dict[str, Any]) -> dict[str, Any]:
    """`edgeship run`-equivalent on a variant: export all formats + quantize tflite,onnx + validate."""
    from edgeship.export import export
    from edgeship.quantize import quantize
    from edgeship.validate.pipeline import validate

    images = np.load(cfg["data"])["images"]
    loaded = load(cfg["model"], images)
    out = Path(cfg["out"])
    st: dict[str, float] = {}
    t = time.perf_counter()
    export(loaded=loaded, formats=["tflite", "onnx", "coreml"], out=out, progress=False)
    st["export"] = time.perf_counter() - t
    t = time.perf_counter()
    quantize(loaded=loaded, calibration=cfg["data"], formats=["tflite", "onnx"], out=out,
             num_samples=cfg["num_samples"], progress=False)
    st["quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    report = validate([out], reference=loaded, data=cfg["data"], iterations=cfg["iterations"], warmup=5,
                      report_dir=out / "report", progress=False, kernel_path_samples=cfg["kernel_path_samples"])
    st["validate"] = time.perf_counter() - t
    p50 = {f"{a.format}.{a.precision}": a.latency_ms.p50 for a in report.artifacts}
    status = {f"{a.format}.{a.precision}": f"{a.status}" + (f" ({a.reason[:120]})" if a.reason else "")
              for a in report.artifacts}
    return {"stages": st, "p50": p50, "status": status}


def child_bare(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same conversions by the bare converter calls, no metadata, no manifest, no validation."""
    images = np.load(cfg["data"])["images"]
    loaded = load(cfg["model"], images)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    x = loaded.spec.preprocessing.apply(images[: cfg["num_samples"]]).astype(np.float32)
    st: dict[str, float] = {}
    t = time.perf_counter()
    (out / "peer_fp32.tflite").write_bytes(peer_tflite(loaded, None))
    st["tflite_fp32"] = time.perf_counter() - t
    t = time.perf_counter()
    (out / "peer_int8.tflite").write_bytes(peer_tflite(loaded, x))
    st["tflite_int8"] = time.perf_counter() - t
    t = time.perf_counter()
    peer_tf2onnx(loaded, out / "peer_fp32.onnx")
    st["tf2onnx"] = time.perf_counter() - t
    t = time.perf_counter()
    peer_coreml(loaded, out / "peer_fp16.mlpackage")
    st["coremltools"] = time.perf_counter() - t
    t = time.perf_counter()
    peer_ort_qdq(out / "peer_fp32.onnx", x, out / "peer_int8_qdq.onnx")
    st["ort_quantize_static"] = time.perf_counter() - t
    return {"stages": st}


def child_demo_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """``edgeship run`` on the demo as ``make demo`` runs it (``cfg["ptq"]``: the preset, "thorough" unless
    --quick, which checks the bench runs rather than measuring it)."""
    from edgeship.pipeline import QuantizeTable, RunConfig, run

    t = time.perf_counter()
    report = run(RunConfig(out=Path(cfg["out"]), quantize=QuantizeTable(ptq=cfg.get("ptq", "thorough"))),
                 echo=lambda s: None)
    return {"run_s": time.perf_counter() - t, "passed": bool(report.passed)}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": child_pipeline, "bare": child_bare, "demo_run": child_demo_run}


def spawn(kind: str, cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run a child; its result plus wall time (with imports) and its own peak RSS (os.wait4)."""
    res_path = workdir / f"{kind}-{time.monotonic_ns()}.json"
    errf = open(workdir / f"{kind}.stderr", "w")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(BENCH), "--child", kind, json.dumps(cfg), str(res_path)],
                            stdout=subprocess.DEVNULL, stderr=errf)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    errf.close()
    if proc.returncode != 0 or not res_path.exists():
        tail = (workdir / f"{kind}.stderr").read_text()[-2000:]
        raise RuntimeError(f"child {kind} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(res_path.read_text())
    result["process_wall_s"] = wall
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    return result


# ---------------------------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------------------------
class Bare:
    """A bare loop: the runtime's own call, timed per call with perf_counter, feed bound once."""

    def __init__(self, fmt: str, path: Path, x: np.ndarray, threads: int) -> None:
        if fmt == "tflite":
            from ai_edge_litert.interpreter import Interpreter
            from edgeship._tf import silenced

            with silenced((2,)):
                self.interp = Interpreter(model_path=str(path), num_threads=threads)
                self.interp.allocate_tensors()
            self.interp.set_tensor(self.interp.get_input_details()[0]["index"], x)
            self.call = self.interp.invoke
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            out = [sess.get_outputs()[0].name]
            self.call = lambda: sess.run(out, feed)

    def times(self, warmup: int, iterations: int) -> list[float]:
        call = self.call
        for _ in range(warmup):
            call()
        ts = []
        for _ in range(iterations):
            t = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t)
        return ts


def measure_latency(model: str, artifacts: list[tuple[str, str, Path, bool]], preprocessing, side: int,
                    rounds: int, warmup: int, iterations: int) -> dict[tuple[str, int], dict[str, list[float]]]:
    """artifacts: (label, fmt, path, is_edgeship). Returns {(label, threads): {"bare": [...], "harness": [...]}}
    with one median (ms) per round."""
    from edgeship.types import Format
    from edgeship.runtimes import runner_for

    images = random_images(1, side, seed=1)
    slots = []
    for label, fmt, path, mine in artifacts:
        for th in THREADS:
            try:
                runner = runner_for(Format(fmt), path, preprocessing, th).open()
                feed = runner.feed(images)
                x = next(iter(feed.values()))
                bare = Bare(fmt, path, x, th)
            except Exception as e:  # noqa: BLE001 - a file the runtime refuses is a result, not a crash
                log(f"{model} {label} {th}T: cannot open: {str(e).splitlines()[0][:160]}")
                slots.append((label, th, None, None, None, str(e).splitlines()[0][:160]))
                continue
            slots.append((label, th, runner if mine else None, feed, bare, None))
    res: dict[tuple[str, int], dict[str, Any]] = {}
    for label, th, _, _, _, err in slots:
        res[(label, th)] = {"bare": [], "harness": [], "error": err}
    chunk = max(1, iterations // CHUNKS)
    for r in range(rounds):
        for label, th, runner, feed, bare, err in slots:
            if err:
                continue
            # A and B alternate in short chunks, so that both see the same background load.
            sides = [("bare", lambda w, n: bare.times(w, n))]
            if runner is not None:
                sides.append(("harness", lambda w, n: runner.time_runs(feed, w, n)))
            pooled: dict[str, list[float]] = {name: [] for name, _ in sides}
            for name, fn in sides:
                fn(warmup, 0)
            for j in range(CHUNKS):
                for name, fn in sides if (r + j) % 2 == 0 else sides[::-1]:
                    pooled[name] += fn(0, chunk)
            for name, times in pooled.items():
                res[(label, th)][name].append(statistics.median(times) * 1e3)
        log(f"{model}: latency round {r + 1}/{rounds} done")
    for label, th, runner, *_ in slots:
        if runner is not None:
            runner.close()
    for (label, th), v in res.items():
        if v["bare"]:
            h = f", harness {statistics.median(v['harness']):.3f}" if v["harness"] else ""
            log(f"{model} {label} {th}T: bare {statistics.median(v['bare']):.3f} ms{h}")
    return res
