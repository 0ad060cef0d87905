"""The Core ML reference executor's ``upsample_bilinear`` (DeepLab-style heads: Keras ``Resizing(bilinear)``), against
TensorFlow's ResizeBilinear in each sampling mode MIL documents."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.runtimes.mlprogram.kernels import KERNELS


@pytest.mark.parametrize("align,half", [(False, True), (True, False), (False, False)])
def test_upsample_bilinear_matches_tensorflow(align, half):
    from edgeship._tf import tf

    x = np.random.default_rng(0).normal(size=(2, 3, 6, 5)).astype(np.float32)  # NCHW, as MIL resizes the last axes
    got = KERNELS["upsample_bilinear"]({})({"x": x, "scale_factor_height": 8.0, "scale_factor_width": 8.0,
                                            "align_corners": align, "half_pixel_centers": half})
    ref = tf().compat.v1.image.resize_bilinear(np.transpose(x, (0, 2, 3, 1)), (48, 40), align_corners=align,
                                               half_pixel_centers=half).numpy()
    assert got.shape == (2, 3, 48, 40)
    np.testing.assert_allclose(got, np.transpose(ref, (0, 3, 1, 2)), atol=2e-6)


def test_upsample_bilinear_keeps_fp16():
    x = np.arange(12, dtype=np.float16).reshape(1, 1, 3, 4)
    got = KERNELS["upsample_bilinear"]({})({"x": x, "scale_factor_height": 2, "scale_factor_width": 2,
                                            "align_corners": False})
    assert got.dtype == np.float16 and got.shape == (1, 1, 6, 8)
    assert got[0, 0, 0, 0] == x[0, 0, 0, 0] and got[0, 0, -1, -1] == x[0, 0, -1, -1]  # corners clamp to the input's
