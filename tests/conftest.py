"""Shared fixtures. Exports are made once per session (conversion is the slow part) into a tmp directory."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeship._tf import quiet_environment

quiet_environment()

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


@pytest.fixture(scope="session")
def demo_release(tmp_path_factory):
    """One exported + quantised demo release for the session: (directory with manifest.json, fp32 and int8 TFLite;
    an .npy of 8 held-out images). Read-only: copy it before changing anything."""
    from PIL import Image

    from edgeship.export import export
    from edgeship.models.loading import load_model
    from edgeship.quantize import quantize

    root = tmp_path_factory.mktemp("demo_release")
    loaded = load_model()
    export(loaded=loaded, out=root / "out", formats=["tflite"], progress=False)
    quantize(loaded=loaded, out=root / "out", formats=["tflite"], num_samples=16, bias_correction=False)
    files = sorted(HELDOUT.rglob("*.png"))[::45][:8]
    np.save(root / "data.npy", np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
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
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
