"""Shared fixtures. Exports are made once per session (conversion is the slow part) into a tmp directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeship._tf import quiet_environment

quiet_environment()
# Progress lines (edgeship/progress.py) stay out of the stderr the tests assert on; tests/test_progress.py tests them
os.environ.setdefault("EDGESHIP_PROGRESS", "off")

from edgeship.models.loading import DEMO_DIR, walk_layers  # noqa: E402

HELDOUT = DEMO_DIR / "heldout"


@pytest.fixture(scope="session")
def demo_heldout():
    """The demo model's held-out images (real handwritten digits), 5 per class."""
    from edgeship.data import load_image_folder
    from edgeship.models.spec import read_labels

    labels = read_labels(DEMO_DIR / "labels.txt")
    full = load_image_folder(HELDOUT, (96, 96), class_names=labels)
    keep = np.concatenate([np.flatnonzero(full.labels == c)[:5] for c in range(len(labels))])
    return full.images[keep], full.labels[keep], labels


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A directory that ``build(directory)`` fills, made once per test run: with pytest-xdist's workers the first to
    need it builds it under a file lock and the others reuse it (conversions are deterministic:
    tests/export/test_reproducible.py). Read-only for the tests that share it."""
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the run's base directory, above each worker's own
        root = root.parent
    out = root / f"shared-{name}"
    with FileLock(f"{out}.lock"):
        if not (root / f"shared-{name}.complete").exists():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            build(out)
            (root / f"shared-{name}.complete").touch()
    return out


@pytest.fixture(scope="session")
def demo_float_exports(tmp_path_factory):
    """The demo exported once for the test run to every float file edgeship makes (TFLite fp32 and fp16, ONNX fp32,
    Core ML fp32 and fp16; 5 conversions): (loaded demo, ExportResult). Read-only: tests take the files they need
    through ``demo_export`` (a directory of their own), not from here."""
    from edgeship.export import ExportResult, export
    from edgeship.manifest import MANIFEST_NAME, Manifest
    from edgeship.models.loading import load_model
    from edgeship.types import Format

    loaded = load_model()
    out = built_once(tmp_path_factory, "demo_float", lambda d: export(
        loaded=loaded, out=d, formats=list(Format), precisions=["fp32", "fp16"], progress=False))
    manifest = Manifest.load(out)
    return loaded, ExportResult(out, out / MANIFEST_NAME, manifest, [out / a.path for a in manifest.artifacts])


@pytest.fixture(scope="session")
def demo_export(demo_float_exports, tmp_path_factory):
    """``demo_export(formats=..., precisions=..., out=None) -> ExportResult``: a directory holding what
    ``export(formats=..., precisions=...)`` of the demo makes, with the manifest it writes (same records, same order),
    copied from the session's one float export instead of converting again (the conversions are deterministic:
    tests/export/test_reproducible.py). ``out``: where (a new temporary directory when None); the caller owns it."""
    import shutil

    from edgeship.export import ExportResult
    from edgeship.export.common import plan
    from edgeship.manifest import MANIFEST_NAME, Manifest
    from edgeship.types import Format, Precision

    _, source = demo_float_exports

    def make(formats=tuple(Format), precisions=None, out=None) -> ExportResult:
        jobs = plan([Format(f) for f in formats], [Precision(p) for p in precisions] if precisions else None)
        out = Path(out) if out is not None else tmp_path_factory.mktemp("demo_export")
        out.mkdir(parents=True, exist_ok=True)
        by_job = {(a.format, a.precision): a for a in source.manifest.artifacts}
        manifest = Manifest.load(source.out_dir)
        manifest.artifacts = []
        result = ExportResult(out, out / MANIFEST_NAME, manifest)
        for job in jobs:
            record = by_job[job]
            src, dest = source.out_dir / record.path, out / record.path
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copy2(src, dest)
            manifest.add(record)
            result.paths.append(dest)
        manifest.save(out)
        return result

    return make


@pytest.fixture(scope="session")
def demo_calibrated():
    """One calibration of the demo for the session (32 calibration images, seed 0; a TFLite conversion, the slow
    step): (loaded demo, the Calibration, the calibrated float flatbuffer for ``quantize_calibrated``)."""
    from edgeship.models.loading import load_model
    from edgeship.quantize.calibration import load_calibration
    from edgeship.quantize.formats.tflite import calibrate

    loaded = load_model()
    cal = load_calibration(None, loaded.spec, num_samples=32, seed=0)
    return loaded, cal, calibrate(loaded, cal.inputs)


@pytest.fixture(scope="session")
def demo_onnx_nchw(tmp_path_factory):
    """The demo's ONNX with an NCHW input, exported once for the session (ExportResult; read-only)."""
    from edgeship.export import export
    from edgeship.models.loading import load_model

    out = tmp_path_factory.mktemp("demo_nchw")
    return export(loaded=load_model(), out=out, formats=["onnx"], onnx_layout="nchw", progress=False)


@pytest.fixture(scope="session")
def demo_release(tmp_path_factory, demo_export):
    """One exported + quantised demo release for the test run: (directory with manifest.json, fp32 and int8 TFLite;
    an .npy of 8 held-out images). Read-only: copy it before changing anything."""
    from PIL import Image

    from edgeship.models.loading import load_model
    from edgeship.quantize import quantize

    def build(root: Path) -> None:
        demo_export(formats=["tflite"], out=root / "out")
        quantize(loaded=load_model(), out=root / "out", formats=["tflite"], num_samples=16, bias_correction=False,
                 ptq="fast")
        files = sorted(HELDOUT.rglob("*.png"))[::45][:8]
        np.save(root / "data.npy", np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))

    root = built_once(tmp_path_factory, "demo_release", build)
    return root / "out", root / "data.npy"


def make_input_sensitive(model, images: np.ndarray, preprocessing) -> None:
    """Random-init MobileNets answer the same for every input (their BN statistics are the init's 0/1), so a
    wrong channel order or a corrupted weight would change nothing visible. Re-estimating every BatchNorm's
    moving statistics from real images (momentum 0 for one pass in training mode) makes each layer's output
    depend on the input again, without training."""
    from edgeship._tf import keras

    k = keras()
    bns = [l for l in walk_layers(model) if isinstance(l, k.layers.BatchNormalization)]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    model(preprocessing.apply(images), training=True)
    for b, m in zip(bns, saved):
        b.momentum = m


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images])


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every Ray test (startup takes seconds): 2 CPUs, no dashboard, workers' logs kept
    out of the test output. Skipped, saying why, when Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]' (the 'ray' extra)")
    import logging

    started = not ray.is_initialized()
    if started:
        # a small object store: two test workers may each run a cluster (pytest-xdist)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
    yield ray
    if started:
        ray.shutdown()


macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")


#: The test files that take longest (the "slowest test files" summary of a full run on the 2-core machine,
#: 2026-12-07: 42.6 worker-minutes in all), started first so that pytest-xdist's two workers do not end with one of
#: them running a long file alone. Order within a file is kept; files not listed follow in their usual order.
SLOW_FILES = (
    "tests/models/test_zoo.py", "tests/test_bench.py", "tests/models/test_training_setups.py",
    "tests/validate/test_executors.py", "tests/quantize/test_quantize_stage.py", "tests/validate/test_validate_cli.py",
    "tests/test_bad_input_catalogue_inputs.py", "tests/test_real_model.py", "tests/validate/test_gate_catches_faults.py",
    "tests/runtimes/test_coreml_reference.py", "tests/validate/test_contained.py", "tests/quantize/test_coreml_w8.py",
    "tests/export/test_formats.py", "tests/quantize/test_tflite_quant.py", "tests/test_bad_input_catalogue.py",
    "tests/export/test_export_check.py", "tests/export/test_bake.py", "tests/quantize/test_fallback.py",
    "tests/export/test_tflite_fast_path.py", "tests/models/test_qat.py", "tests/test_sweep.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    root = Path(str(config.rootpath))

    def key(item):
        rel = Path(str(item.path)).relative_to(root).as_posix() if str(item.path).startswith(str(root)) else ""
        return rank.get(rel, len(SLOW_FILES))
    items.sort(key=key)  # stable: each file's tests keep their order


#: Seconds per test file (setup + call + teardown of its tests, summed), gathered on the controller from every
#: worker's reports, printed beside --durations' 30 slowest tests: the figure to look at when the suite grows.
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[0]
    _FILE_SECONDS[name] = _FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    total = sum(_FILE_SECONDS.values())
    terminalreporter.section(f"slowest test files (of {total / 60:.1f} worker-minutes in all)")
    for name, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:20]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {name}")
