from __future__ import annotations

import pytest

from edgeship.errors import UserError
from edgeship.models.registry import VARIANTS, get_variant
from edgeship.models.spec import Preprocessing


def test_grid_matches_the_papers():
    names = set(VARIANTS)
    assert len([n for n in names if n.startswith("mobilenet_v1_")]) == 4 * 4
    assert len([n for n in names if n.startswith("mobilenet_v2_")]) == 6 * 5
    assert {"mobilenet_v1_0.25_128", "mobilenet_v1_1.0_224", "mobilenet_v2_1.4_224", "mobilenet_v2_0.35_96",
            "mobilenet_v3_small_1.0_224", "mobilenet_v3_large_minimalistic_1.0_224"} <= names
    assert all(v.name == n for n, v in VARIANTS.items())


def test_unknown_variant_suggests_close_names():
    with pytest.raises(UserError, match="mobilenet_v2_1.0_224"):
        get_variant("mobilenet_v2_1.0_225")


@pytest.mark.parametrize("name,expect_identity", [("mobilenet_v1_0.25_128", False), ("mobilenet_v3_small_0.75_224", True)])
def test_build_gives_the_named_shape_and_preprocessing(name, expect_identity):
    v = get_variant(name)
    model = v.build(classes=7)
    assert tuple(model.input_shape[1:]) == (v.resolution, v.resolution, 3)
    assert model.output_shape == (None, 7)
    spec = v.spec(classes=7)
    assert (spec.preprocessing == Preprocessing.identity()) is expect_identity
    assert spec.preprocessing.value_range == ((0.0, 255.0) if expect_identity else (-1.0, 1.0))


def test_builds_are_seeded():
    import numpy as np

    a = get_variant("mobilenet_v2_0.35_96").build(classes=3)
    b = get_variant("mobilenet_v2_0.35_96").build(classes=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_v3_variants_at_resolutions_other_than_224():
    for name in ("mobilenet_v3_large_0.75_160", "mobilenet_v3_small_minimalistic_1.0_96"):
        assert name in VARIANTS
    v = get_variant("mobilenet_v3_small_minimalistic_1.0_96")
    assert v.spec().input_shape == (96, 96, 3) and v.spec().preprocessing.mean == (0.0, 0.0, 0.0)
    assert v.build(classes=10).input_shape == (None, 96, 96, 3)
