"""Calibration needs images only: folder names are never matched against the model's labels."""

from __future__ import annotations

import shutil

import numpy as np

from edgeship.models.registry import get_variant
from edgeship.quantize.calibration import DEMO_CALIBRATION, load_calibration


def test_default_calibration_set_serves_a_1000_class_variant():
    spec = get_variant("mobilenet_v2_0.35_96").spec()  # 1000 ImageNet-index labels, none named like the folders
    cal = load_calibration(None, spec, num_samples=8)
    assert cal.images.shape == (8, 96, 96, 3) and cal.inputs.dtype == np.float32


def test_any_sub_folders_and_stored_labels_are_fine(tmp_path):
    spec = get_variant("mobilenet_v2_0.35_96").spec()
    nested = tmp_path / "cal" / "batch_01"
    nested.mkdir(parents=True)
    for f in sorted(DEMO_CALIBRATION.rglob("*.png"))[:5]:
        shutil.copy(f, nested / f"{f.parent.name}_{f.name}")
    (tmp_path / "cal" / "batch_02" / "deeper").mkdir(parents=True)
    shutil.copy(next(DEMO_CALIBRATION.rglob("*.png")), tmp_path / "cal" / "batch_02" / "deeper" / "x.png")
    assert len(load_calibration(tmp_path / "cal", spec, num_samples=10).images) == 6
    npz = tmp_path / "cal.npz"  # labels stored for another model (class 5000) are ignored too
    np.savez(npz, images=np.zeros((3, 96, 96, 3), np.uint8), labels=np.array([0, 1, 5000]))
    assert len(load_calibration(npz, spec, num_samples=3).images) == 3
