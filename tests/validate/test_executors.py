"""Executors: mergeable statistics (merge of shards == the whole), the Ray executor's report equal to the local one
figure by figure, a killed worker survived, a bad image failed alone, and the local executor importing no Ray.

The Ray tests share one local Ray cluster (``ray_cluster`` in tests/conftest.py); they skip, saying why, when Ray
is not installed (``pip install -e '.[test]'`` installs it)."""

from __future__ import annotations

import math

import subprocess
import sys

import numpy as np
import pytest

from edgeship.errors import UserError
from edgeship.models.loading import DEMO_DIR
from edgeship.validate import compare as cmp
from edgeship.validate.compare import Comparison

LABELS = [str(i) for i in range(10)]


def _comparison(ref, out, truth, batches, probabilities=False):
    c = Comparison(LABELS, probabilities=probabilities)
    images = np.zeros((len(ref), 4, 4, 3), np.uint8)
    for a, b in batches:
        c.update(ref[a:b], out[a:b], images[a:b], truth[a:b], [f"s{i}" for i in range(a, b)], a)
    return c


def test_merge_of_shards_equals_the_whole_figure_by_figure():
    """Outputs noisy enough that many top-1s flip (> MAX_THUMBNAILS flips, so the thumbnail rule is exercised),
    cut into shards on batch boundaries; merging the shards' comparisons in order gives every figure exactly."""
    rng = np.random.default_rng(0)
    n, bs = 300, 16
    ref = rng.normal(size=(n, 10)).astype(np.float32)
    out = (ref + rng.normal(scale=0.6, size=ref.shape)).astype(np.float32)
    out[:7] = ref[:7]  # some equal values
    truth = rng.integers(0, 10, n)
    batches = [(a, min(n, a + bs)) for a in range(0, n, bs)]
    whole = _comparison(ref, out, truth, batches)
    cuts = [0, 3, 4, 11, len(batches)]  # shards of 3, 1, 7 and 8 batches
    shards = [_comparison(ref, out, truth, batches[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    assert len(whole.flips) > cmp.MAX_THUMBNAILS
    assert merged.metrics() == whole.metrics()
    assert merged.flips_by_margin() == whole.flips_by_margin()
    assert merged.sample_errors() == whole.sample_errors()
    assert [(f.index, f.source, f.reference, f.artifact, f.truth, f.margin, f.thumbnail_png) for f in merged.flips] \
        == [(f.index, f.source, f.reference, f.artifact, f.truth, f.margin, f.thumbnail_png) for f in whole.flips]
    # and the metrics are the one-shot functions' on the whole arrays
    m = whole.metrics()
    assert m.max_abs_error == pytest.approx(float(np.max(np.abs(out.astype(np.float64) - ref))))
    assert m.top1_agreement == pytest.approx(float(np.mean(ref.argmax(1) == out.argmax(1))))


def test_local_executor_imports_no_ray():
    code = ("import sys; import edgeship.cli, edgeship.pipeline, edgeship.validate.pipeline, "
            "edgeship.validate.executors, edgeship.validate.shard; "
            "from edgeship.validate.executors import get_executor; get_executor('local'); "
            "edgeship.cli.build_parser().parse_args(['validate', '--artifacts', 'x.tflite']); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_executor_choice_from_config_cli_and_api(tmp_path, capsys):
    from edgeship.cli import main
    from edgeship.pipeline import load_config
    from edgeship.validate.executors import LocalExecutor, get_executor

    toml = tmp_path / "edgeship.toml"
    toml.write_text('[validate]\nexecutor = "ray"\naddress = "10.0.0.5:6379"\nworkers = 3\n')
    cfg = load_config(toml)
    assert (cfg.executor, cfg.address, cfg.workers) == ("ray", "10.0.0.5:6379", 3)
    assert load_config(None).executor == "local"
    assert isinstance(get_executor("local"), LocalExecutor)
    with pytest.raises(UserError, match="unknown executor"):
        get_executor("dask")
    assert main(["validate", "--artifacts", "x.tflite", "--address", "h:1"]) == 2
    assert "--executor ray only" in capsys.readouterr().err


def test_a_bad_image_fails_alone(tmp_path, int8_files):
    """A corrupt file in the data set is failed with its reason; the others are validated (skip_bad_images, the Ray
    executor's default; without it the local executor stops with one line, tests/test_bad_input_catalogue_inputs)."""
    import shutil

    from edgeship.validate.pipeline import validate

    data = tmp_path / "data"
    for label in ("three", "seven"):
        (data / label).mkdir(parents=True)
        for f in sorted((DEMO_DIR / "heldout" / label).glob("*.png"))[:6]:
            shutil.copy(f, data / label / f.name)
    (data / "three" / "0000_broken.png").write_bytes(b"\x89PNG not really")
    tflite, _ = int8_files
    report = validate([tflite], data=data, iterations=2, progress=False, kernel_path_samples=0, skip_bad_images=True)
    assert report.data["count"] == 13
    (failed,) = report.data["failed_samples"]
    assert failed["source"] == "three/0000_broken.png" and "cannot decode" in failed["reason"]
    (a,) = report.artifacts
    assert a.status.value == "passed" and a.metrics.top1_agreement is not None
    assert sum(b["samples"] for b in a.flips_by_margin) == 12
    from edgeship.validate.reports import to_markdown

    assert "Unreadable samples:** 1" in to_markdown(report)


# ------------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def int8_files(tmp_path_factory, demo_calibrated):
    """An int8 TFLite of the demo and the int8 ONNX rewritten from it (calibrated on 32 images: the session's one
    calibration, ``demo_calibrated`` in tests/conftest.py)."""
    from edgeship.export.common import ModelInfo
    from edgeship.quantize.formats.onnx import onnx_from_tflite
    from edgeship.quantize.formats.tflite import quantize_calibrated

    loaded, _, calibrated = demo_calibrated
    int8 = quantize_calibrated(calibrated, io_dtype="uint8",
                               input_range=loaded.spec.preprocessing.value_range, relu6_fixed=True)
    out = tmp_path_factory.mktemp("int8")
    tfl, onx = out / "demo_int8.tflite", out / "demo_int8.onnx"
    tfl.write_bytes(int8.model)
    onx.write_bytes(onnx_from_tflite(int8.model, loaded, ModelInfo.default_for(loaded.spec.name, 10)))
    return tfl, onx


def _figures(report) -> dict:
    """The report without what legitimately differs between runs: latency, memory, time and place, executor."""
    d = report.to_dict()
    for key in ("created", "machine", "executor"):
        d.pop(key)
    for a in d["artifacts"]:
        a.pop("latency_ms")
        a.pop("peak_rss_bytes")
    if (d.get("contract") or {}).get("inference"):
        d["contract"]["inference"].pop("seconds")  # how long the preprocessing inference took
    d["thumbnails"] = [[f.thumbnail_png for f in a.flips] for a in report.artifacts]
    return d


def _differences(a, b, where: str = "") -> list[str]:
    """Where two reports' figures differ: counts, names and flags exactly; real numbers within 1e-5 (absolute or
    relative). A shard's float reference runs in a Ray worker's own TensorFlow (one thread), whose oneDNN kernels
    sum in another order on some CPUs (measured on an AVX-512 VNNI EPYC: a mean margin 0.9641542543 here,
    0.9641542577 there; a sample's max error 0.5056825 here, 0.5056839 there; equal to the last bit on AVX2). A
    sharding mistake moves a share by a sample, 1/360 at least, a count, or a sample's error wholesale."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items, {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != {b!r}"]


def test_differences_see_a_moved_figure_and_not_float_noise():
    base = {"n": 360, "m": [0.9641542543232362, {"flips": 3, "s": "ok"}]}
    assert not _differences(base, {"n": 360, "m": [0.9641542577291665, {"flips": 3, "s": "ok"}]})
    assert not _differences({"e": 0.5056824684143066}, {"e": 0.5056838989257812})
    assert _differences(base, {"n": 360, "m": [0.9641542543232362 + 1 / 360, {"flips": 3, "s": "ok"}]})
    assert _differences(base, {"n": 360, "m": [0.9641542543232362, {"flips": 4, "s": "ok"}]})
    assert _differences(base, {"n": 359, "m": [0.9641542543232362, {"flips": 3, "s": "ok"}]})


@pytest.fixture(scope="module")
def local_report(int8_files):
    from edgeship.validate.pipeline import validate

    return validate(list(int8_files), iterations=3, progress=False, kernel_path_samples=100)


def test_ray_report_equals_local_figure_by_figure(ray_cluster, int8_files, local_report):
    """The demo held-out set (360 images) in 6 shards of 64 over 2 workers: every figure equals the local run's;
    latency was measured once, on a node the report names."""
    from edgeship.validate.pipeline import validate
    from edgeship.validate.ray_executor import RayExecutor

    report = validate(list(int8_files), iterations=3, progress=False, kernel_path_samples=100,
                      executor=RayExecutor(workers=2, shard_size=64))
    assert report.executor["name"] == "ray" and report.executor["shards"] == 6
    assert report.executor["latency_node"]["node_id"] and report.executor["latency_node"]["ip"]
    assert all(a.latency_ms.p50 > 0 and a.iterations == 3 for a in report.artifacts)
    from edgeship.validate.reports import to_markdown

    assert f"latency timed once on node {report.executor['latency_node']['hostname']}" in to_markdown(report)
    flips = sum(len(a.flips) for a in local_report.artifacts)
    assert flips > 0 and all(a.kernel_path_samples == 100 for a in local_report.artifacts)  # both paths exercised
    assert not _differences(_figures(report), _figures(local_report))


def test_a_killed_worker_is_retried(ray_cluster, int8_files, local_report, tmp_path):
    """The first shard task kills its own worker process (os._exit, once: a marker file says it happened); Ray
    re-runs it (max_retries) and the report is still the local one."""
    from edgeship.validate.pipeline import validate
    from edgeship.validate.ray_executor import FAULT_ENV, RayExecutor

    marker = tmp_path / "died-once"
    executor = RayExecutor(workers=2, shard_size=128, max_retries=2,
                           runtime_env={"env_vars": {FAULT_ENV: str(marker)}})
    report = validate(list(int8_files), iterations=3, progress=False, kernel_path_samples=100, executor=executor)
    assert marker.exists(), "no worker was killed"
    assert not _differences(_figures(report), _figures(local_report))


def test_a_worker_that_dies_on_every_try_is_exit_3(ray_cluster, int8_files, tmp_path):
    """Every try of a shard kills its worker: after max_retries Ray gives up, and that is the environment's problem
    (exit 3, one line naming it), not a bug (it was exit 4)."""
    from edgeship.errors import EnvironmentProblem
    from edgeship.validate.pipeline import validate
    from edgeship.validate.ray_executor import FAULT_ENV, RayExecutor

    executor = RayExecutor(workers=1, max_retries=1, runtime_env={"env_vars": {FAULT_ENV: "always"}})
    with pytest.raises(EnvironmentProblem, match="a Ray worker died on every try") as e:
        validate(list(int8_files), iterations=1, progress=False, kernel_path_samples=0, executor=executor)
    assert e.value.exit_code == 3 and "\n" not in str(e.value)


def test_an_unreachable_address_is_exit_3_within_seconds(tmp_path, capsys, int8_files):
    """--address where no cluster answers: one line, exit 3, in seconds (Ray itself retried for minutes, printing
    its log lines), nothing written."""
    import socket
    import time

    from edgeship.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    code = main(["validate", "--artifacts", *map(str, int8_files), "--executor", "ray", "--address", f"127.0.0.1:{port}",
                 "--report", str(tmp_path / "r"), "--iterations", "1"])
    took = time.perf_counter() - t
    err = capsys.readouterr().err
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0], err
    assert took < 60, took
    assert not (tmp_path / "r").exists()


def test_sigterm_during_a_ray_run_is_exit_143_in_one_line(int8_files, tmp_path):
    """SIGTERM (CI's cancel, docker stop) while Ray runs: edgeship's cleanup and exit 143 with its one line, as with
    the local executor. ray.init installed its C++ failure handler for SIGTERM, which aborted the process (exit 134,
    Ray's stack dump on stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, EDGESHIP_PROGRESS="lines")
    proc = subprocess.Popen([sys.executable, "-m", "edgeship", "validate", "--artifacts", *map(str, int8_files),
                             "--executor", "ray", "--iterations", "1000000", "--report", str(tmp_path / "r")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    deadline = time.monotonic() + 240
    assert proc.stderr is not None
    while "validate (ray" not in seen and time.monotonic() < deadline:  # the shards are running
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = seen + rest
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == "edgeship: terminated (SIGTERM); no partial file was left", err[-2000:]
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "r").exists()


def test_ctrl_c_cancels_the_shards_and_writes_nothing(ray_cluster, int8_files, tmp_path):
    """An interrupt (SIGINT's KeyboardInterrupt, raised here by a timer) while shards run: it propagates, the
    tasks in flight are cancelled (the cluster's CPUs come back), and no report file is left."""
    import signal
    import time

    from edgeship.validate.pipeline import validate
    from edgeship.validate.ray_executor import RayExecutor

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(4)
    try:
        with pytest.raises(KeyboardInterrupt):
            validate(list(int8_files), iterations=3, progress=False, kernel_path_samples=360,
                     report_dir=tmp_path / "report", executor=RayExecutor(workers=2, shard_size=32))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    # the report directory may exist (validate checks it is writable before the work), but holds nothing
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]
    deadline = time.time() + 30
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) == 2, "cancelled shards still hold CPUs"
