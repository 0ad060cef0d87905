"""Fixtures of the quantise tests: one calibration of the demo (32 images, ~10 s) for the session, and int8
TFLite/ONNX pairs quantised from it on demand (~0.1 s each)."""

from __future__ import annotations

import pytest

from edgeship.export.common import ModelInfo
from edgeship.models.loading import DEMO_DIR
from edgeship.types import Layout


@pytest.fixture(scope="session")
def demo(demo_calibrated):
    """(loaded demo, Calibration, calibrated flatbuffer, held-out images): the session's one calibration
    (``demo_calibrated`` in tests/conftest.py, shared with the validate tests)."""
    from edgeship.data import load_image_folder

    loaded, cal, calibrated = demo_calibrated
    heldout = load_image_folder(DEMO_DIR / "heldout", loaded.spec.input_shape[:2], loaded.spec.labels).images
    return loaded, cal, calibrated, heldout


@pytest.fixture(scope="session")
def make(demo, tmp_path_factory):
    """(tflite path, onnx path) for an I/O type, layout and float-kept layers, made once each. ``portable=False``:
    the ONNX keeps the TFLite's int8 weights (u8s8), which saturate on x86 AVX2 without VNNI."""
    from edgeship.quantize.formats.onnx import onnx_from_tflite
    from edgeship.quantize.formats.tflite import quantize_calibrated

    loaded, _, calibrated, _ = demo
    out = tmp_path_factory.mktemp("onnx_int8")
    info = ModelInfo.default_for(loaded.spec.name, loaded.spec.num_classes)
    made = {}

    def get(io_dtype: str = "uint8", layout: Layout = Layout.NHWC, keep_float: tuple[str, ...] = (),
            relu6_fixed: bool = True, portable: bool = True):
        key = (io_dtype, layout, keep_float, relu6_fixed, portable)
        if key not in made:
            extra = {"keep_float": list(keep_float)} if keep_float else {}
            int8 = quantize_calibrated(calibrated, io_dtype=io_dtype, input_range=loaded.spec.preprocessing.value_range,
                                       relu6_fixed=relu6_fixed, **extra)
            stem = f"demo_{io_dtype}_{layout}_{len(keep_float)}_{relu6_fixed}_{'u8u8' if portable else 'u8s8'}"
            tfl, onx = out / f"{stem}.tflite", out / f"{stem}.onnx"
            tfl.write_bytes(int8.model)
            onx.write_bytes(onnx_from_tflite(int8.model, loaded, info, layout=layout, portable=portable,
                                             warn=lambda msg: pytest.fail(f"unexpected fallback: {msg}")))
            made[key] = (tfl, onx)
        return made[key]

    return get


@pytest.fixture(scope="session")
def demo_heldout_x(demo):
    """The demo's held-out images, preprocessed (float32 (360, 96, 96, 3))."""
    loaded, _, _, heldout = demo
    return loaded.spec.preprocessing.apply(heldout)
