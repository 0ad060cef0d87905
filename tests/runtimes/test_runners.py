"""Each runner through the one interface: same input errors everywhere, client-style feeds (metadata
preprocessing, NCHW, uint8 quantisation), timing of the inference call only, Core ML by reference execution
off macOS."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeship.errors import UserError
from edgeship.models.loading import load_model
from edgeship.types import Format, Layout
from edgeship.runtimes.runner import Unavailable
from edgeship.runtimes import runner_for
from edgeship.runtimes.keras import KerasRunner
from edgeship.runtimes.litert import LiteRTRunner
from edgeship.runtimes.onnxrt import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def files(demo_export, demo_onnx_nchw, demo_heldout):
    """The demo's default float files and its NCHW ONNX (the session's exports, conftest.py)."""
    loaded = load_model()
    res = demo_export(formats=list(Format))
    paths = {a.format.value: res.out_dir / a.path for a in res.manifest.artifacts}
    paths["onnx_nchw"] = demo_onnx_nchw.paths[0]
    images, _, _ = demo_heldout
    reference = KerasRunner(loaded).open().predict(images)
    return loaded, paths, images, reference


@pytest.mark.parametrize("key", ["tflite", "onnx", "onnx_nchw"])
def test_runner_predicts_like_keras(files, key):
    loaded, paths, images, reference = files
    fmt = Format.ONNX if key.startswith("onnx") else Format(key)
    runner = runner_for(fmt, paths[key], loaded.spec.preprocessing).open()
    assert runner.labels == list(loaded.spec.labels)  # read from the file's own metadata
    assert runner.load_ms > 0
    out = runner.predict(images)
    assert np.max(np.abs(out - reference)) < 1e-4
    assert runner.last_run_s is not None and runner.last_run_s > 0
    if key == "onnx_nchw":
        assert runner.layout is Layout.NCHW and runner.feed(images[:2])["image"].shape == (2, 3, 96, 96)


@pytest.mark.parametrize("key", ["tflite", "onnx"])
def test_every_runner_words_input_errors_the_same(files, key):
    loaded, paths, images, _ = files
    runner = runner_for(Format(key), paths[key], loaded.spec.preprocessing).open()
    name = runner.inputs()[0].name
    with pytest.raises(UserError, match=rf"input '{name}' is float64, the artifact expects float32"):
        runner.infer({name: np.zeros((1, 96, 96, 3))})
    with pytest.raises(UserError, match=r"has shape \(1, 64, 64, 3\), the artifact expects"):
        runner.infer({name: np.zeros((1, 64, 64, 3), np.float32)})
    with pytest.raises(UserError, match="feed has inputs"):
        runner.infer({"nope": np.zeros((1, 96, 96, 3), np.float32)})


def test_litert_reference_kernels_and_threads(files):
    loaded, paths, images, reference = files
    runner = LiteRTRunner(paths["tflite"], loaded.spec.preprocessing, threads=2)
    runner.reference_kernels = True
    out = runner.open().predict(images[:5])
    assert np.max(np.abs(out - reference[:5])) < 1e-4


def test_onnxruntime_without_graph_optimisation(files):
    loaded, paths, images, reference = files
    runner = OnnxRuntimeRunner(paths["onnx"], loaded.spec.preprocessing)
    runner.optimization_level = "disable"
    out = runner.open().predict(images[:5])
    assert np.max(np.abs(out - reference[:5])) < 1e-4


def test_uint8_input_is_quantised_with_the_artifacts_own_parameters(files):
    """A fake uint8-input runner: the base class quantises normalised float pixels with its scale/zero point, and
    passes uint8 pixels through unchanged."""
    from edgeship.runtimes.runner import InputInfo, Runner

    class Echo(Runner):
        def _open(self): ...
        def inputs(self):
            return [InputInfo("image", (1, 2, 2, 3), np.dtype(np.uint8), scale=2 / 255, zero_point=128)]
        def _bind(self, feed): self.fed = feed["image"]
        def _run(self): ...
        def _fetch(self): return self.fed.reshape(1, -1)

    loaded, _, _, _ = files
    r = Echo("x", loaded.spec.preprocessing).open()
    img = np.array([[[[0, 127, 255]] * 2] * 2], np.uint8)  # normalised: -1, ~0, 1
    q = r.feed(img.astype(np.float32))["image"]  # float pixels: normalised, then quantised
    assert q.dtype == np.uint8 and r.input_feed == "re-quantised floats"
    assert np.abs(q[0, 0, 0].astype(int) - [0, 128, 255]).max() <= 1  # -1, 0, 1 at scale 2/255 around 128
    raw = r.feed(img)["image"]  # uint8 pixels into a uint8 input: as they are, as MediaPipe feeds them
    assert r.input_feed == "raw uint8 pixels (as MediaPipe)" and np.array_equal(raw, img)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the Linux behaviour")
def test_coreml_off_macos_runs_by_reference(files):
    """Core ML itself is unavailable off macOS; runner_for gives the NumPy reference executor instead."""
    from edgeship.runtimes.coreml import CoreMLRunner
    from edgeship.runtimes.coreml_reference import CoreMLReferenceRunner

    loaded, paths, images, reference = files
    with pytest.raises(Unavailable, match="needs macOS"):
        CoreMLRunner(paths["coreml"], loaded.spec.preprocessing).open()
    runner = runner_for(Format.COREML, paths["coreml"], loaded.spec.preprocessing).open()
    assert isinstance(runner, CoreMLReferenceRunner) and runner.runtime == "coreml-reference"
    assert runner.labels == list(loaded.spec.labels)
    out = runner.predict(images[:10])  # the fp16 package
    assert np.array_equal(out.argmax(1), reference[:10].argmax(1))
    assert np.max(np.abs(out - reference[:10])) < 0.05 * np.max(np.abs(reference))
