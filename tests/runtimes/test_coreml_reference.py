"""Core ML off macOS: the ``coreml-reference`` runner executes the saved ML Program with NumPy. The fp32 packages
of the demo and of V1, V2, V3 small and V3 large (minimalistic) answer like Keras; the fp16 demo agrees on top-1
with Keras over the held-out set; the W8 package runs; the validator reports the runner's rows as run, not
skipped; and on macOS the reference agrees with Core ML itself."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeship.export import export
from edgeship.models.loading import load_model
from edgeship.types import Format
from edgeship.runtimes.coreml_reference import NOTE, CoreMLReferenceRunner
from tests.conftest import macos_only, make_input_sensitive, resize_batch

VARIANTS = ["mobilenet_v1_0.25_128", "mobilenet_v2_0.35_96", "mobilenet_v3_small_0.75_224",
            "mobilenet_v3_large_minimalistic_1.0_224"]
N_COMPARED = 6  # images per variant through the executor (a 224 V3 takes ~40 ms each)


@pytest.fixture(scope="session")
def demo_packages(demo_export):
    """The trained demo exported to Core ML fp32 and fp16 (the session's one export, conftest.py), and the fp16 one
    quantised to W8 (int8 weights): (loaded model, {precision: path})."""
    from edgeship.quantize.formats.coreml import quantize_coreml_w8

    loaded = load_model()
    result = demo_export(formats=["coreml"], precisions=["fp32", "fp16"])
    out = result.out_dir
    paths = {p.name.rsplit("_", 1)[1].split(".")[0]: p for p in result.paths}
    paths["w8"] = out / "edgeship_demo_w8.mlpackage"
    quantize_coreml_w8(paths["fp16"], paths["w8"])
    assert set(paths) == {"fp32", "fp16", "w8"}
    return loaded, paths


@pytest.fixture(scope="session")
def demo_report(demo_packages):
    """The validator on the fp16 and W8 demo packages, over the 360 held-out images: (report, {precision:
    ArtifactResult}). (The fp32 package is compared with Keras directly, below.)"""
    from edgeship.validate import validate

    loaded, paths = demo_packages
    order = ["fp16", "w8"]
    report = validate([paths[p] for p in order], reference=loaded, iterations=3, warmup=1, progress=False)
    assert report.data["count"] == 360
    return report, dict(zip(order, report.artifacts))


@pytest.fixture(scope="session", params=["demo", *VARIANTS])
def fp32_package(request, tmp_path_factory, demo_heldout, demo_packages):
    """(loaded model, fp32 .mlpackage, images, Keras logits for them)."""
    images, _, _ = demo_heldout
    name = request.param
    if name == "demo":
        loaded, paths = demo_packages
        path = paths["fp32"]
    else:
        loaded = load_model(name)
        images = resize_batch(images, loaded.spec.resolution)
        make_input_sensitive(loaded.keras_model, images, loaded.spec.preprocessing)
        out = tmp_path_factory.mktemp(name)
        (path,) = export(loaded=loaded, out=out, formats=["coreml"], precisions=["fp32"], progress=False).paths
    images = images[:: len(images) // N_COMPARED][:N_COMPARED]  # different classes
    reference = np.asarray(loaded.keras_model(loaded.spec.preprocessing.apply(images), training=False))
    return loaded, path, images, reference


def test_fp32_package_matches_keras(fp32_package):
    loaded, path, images, reference = fp32_package
    runner = CoreMLReferenceRunner(path, loaded.spec.preprocessing).open()
    assert runner.labels == list(loaded.spec.labels) and runner._program.precision == "fp32"
    got = runner.predict(images)
    scale = float(np.max(np.abs(reference)))
    err = float(np.max(np.abs(got - reference)))
    print(f"{path.name}: max abs error {err:.3g} over output scale {scale:.3g} ({err / scale:.2g} relative)")
    assert err <= 1e-4 * scale, (err, scale)
    assert np.array_equal(got.argmax(1), reference.argmax(1))
    assert len(set(reference.argmax(1).tolist())) >= 2  # the comparison is between input-dependent answers


def test_fp16_demo_agrees_with_keras_on_the_heldout_set(demo_packages, demo_report, demo_heldout):
    from edgeship.runtimes import RUNTIME_NAMES

    report, rows = demo_report
    fp16 = rows["fp16"]
    assert fp16.runtime == RUNTIME_NAMES[Format.COREML]
    print(f"fp16 demo: top-1 agreement {fp16.metrics.top1_agreement:.4f} over {report.data['count']} images, "
          f"max abs error {fp16.metrics.max_abs_error:.3g}")
    assert fp16.metrics.top1_agreement >= 0.995  # the validator's comparison with Keras, all 360 images
    # fp16 is visible: not the fp32 answer, yet within fp16's precision of it
    loaded, paths = demo_packages
    images, _, _ = demo_heldout
    runner = CoreMLReferenceRunner(paths["fp16"], loaded.spec.preprocessing).open()
    assert runner._program.precision == "fp16"
    got = runner.predict(images)
    reference = np.asarray(loaded.keras_model(loaded.spec.preprocessing.apply(images), training=False))
    err = np.abs(got - reference)
    assert 0 < err.max() < 0.05 * np.abs(reference).max()
    assert np.mean(got.argmax(1) == reference.argmax(1)) >= 0.98


def test_w8_package_runs_and_agrees_with_the_float_top1(demo_packages, demo_heldout):
    from edgeship.runtimes.mlprogram import MLProgram

    loaded, paths = demo_packages
    program = MLProgram(paths["w8"])
    assert {op.type for op in program.ops} >= {"conv", "linear"}
    loaded_ops = [op.op_type for op in program.program.functions["main"].operations]
    assert loaded_ops.count("constexpr_affine_dequantize") == 53  # every conv/linear weight is int8 in the file
    images, _, _ = demo_heldout
    w8 = CoreMLReferenceRunner(paths["w8"], loaded.spec.preprocessing).open().predict(images)
    flt = CoreMLReferenceRunner(paths["fp16"], loaded.spec.preprocessing).open().predict(images)
    assert np.mean(w8.argmax(1) == flt.argmax(1)) >= 0.98
    assert not np.array_equal(w8, flt)  # the int8 weights change the answer a little


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML itself runs on macOS")
def test_runner_for_coreml_off_macos_is_the_reference(demo_packages):
    from edgeship.runtimes.runner import Unavailable
    from edgeship.runtimes import RUNTIME_NAMES, runner_for
    from edgeship.runtimes.coreml import CoreMLRunner

    loaded, paths = demo_packages
    runner = runner_for(Format.COREML, paths["fp16"], loaded.spec.preprocessing)
    assert isinstance(runner, CoreMLReferenceRunner) and runner.runtime == "coreml-reference"
    assert RUNTIME_NAMES[Format.COREML] == "coreml-reference"
    with pytest.raises(Unavailable, match="needs macOS"):  # Core ML itself still cannot run here
        CoreMLRunner(paths["fp16"], loaded.spec.preprocessing).open()


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the report off macOS")
def test_validate_runs_coreml_by_reference_and_says_so(demo_report):
    from edgeship.validate.results import Status

    report, rows = demo_report
    for a in rows.values():
        assert a.status is Status.PASSED, a.reason
        assert a.runtime == "coreml-reference" and a.reason == NOTE
        assert a.metrics.top1_agreement is not None and a.latency_ms.p50 is not None and a.latency_ms.p50 > 0
    assert rows["w8"].metrics.top1_agreement >= 0.99
    assert report.passed


@macos_only
def test_reference_agrees_with_core_ml_itself(demo_packages, demo_heldout):
    from edgeship.runtimes.coreml import CoreMLRunner

    loaded, paths = demo_packages
    images, _, _ = demo_heldout
    for precision, rel in (("fp32", 1e-3), ("fp16", 0.05), ("w8", 0.05)):
        apple = CoreMLRunner(paths[precision], loaded.spec.preprocessing).open().predict(images)
        ours = CoreMLReferenceRunner(paths[precision], loaded.spec.preprocessing).open().predict(images)
        assert np.max(np.abs(ours - apple)) <= rel * np.max(np.abs(apple)), precision
        assert np.mean(ours.argmax(1) == apple.argmax(1)) >= 0.98, precision


def test_a_failed_gate_gives_the_reason_not_what_ran_it():
    """The reference's note ("reference execution (NumPy)...") is the runtime's, said on a pass; a failed gate's
    reason is the gate alone, so the report's "why" does not read the note as the cause."""
    from edgeship.validate.pipeline import _gate
    from edgeship.validate.policy import load_policy
    from edgeship.validate.results import ArtifactResult, Metrics, Status
    from edgeship.models.spec import ModelSpec

    r = ArtifactResult(path="m.mlpackage", format="coreml", precision="w8", runtime="coreml-reference",
                       status=Status.PASSED, reason=NOTE)
    r.metrics = Metrics(top1_agreement=0.5, max_abs_error=0.5)
    _gate({0: r}, [0], load_policy(), ModelSpec(name="m", input_shape=(8, 8, 3), num_classes=3))
    assert r.status is Status.FAILED and "top1_agreement" in (r.reason or "") and "NumPy" not in (r.reason or "")
