"""``edgeship sweep`` on the shared local Ray cluster: 4 small variants, the table and the plot."""

from __future__ import annotations

import json

import pytest

from edgeship.errors import UserError
from edgeship.sweep import SweepConfig, markdown, sweep, variants


def test_the_grid_is_the_registry_names_and_refuses_an_empty_one():
    config = SweepConfig(families=["mobilenet_v1", "mobilenet_v2"], alphas=[0.25, 0.35], resolutions=[96, 128])
    assert variants(config) == ["mobilenet_v1_0.25_128", "mobilenet_v2_0.35_96", "mobilenet_v2_0.35_128"]
    with pytest.raises(UserError, match="edgeship models"):
        variants(SweepConfig(families=["mobilenet_v1"], alphas=[0.3], resolutions=[100]))


@pytest.mark.slow
def test_sweep_of_4_variants_writes_the_table_and_the_plot(ray_cluster, tmp_path):
    """A 2 x 2 grid (alpha x resolution) over the cluster's 2 workers: each variant costs a TFLite conversion, and
    the MACs ordering needs only the corners (was 2 x 4, 8 conversions)."""
    from PIL import Image

    config = SweepConfig(families=["mobilenet_v2"], alphas=[0.35, 0.5], resolutions=[96, 192],
                         precisions=["fp32"], formats=["tflite"], iterations=3, out=tmp_path / "sweep")
    rows = sweep(config, progress=False, echo=lambda _: None)
    assert len({r["variant"] for r in rows}) == 4 and len(rows) == 4
    for r in rows:
        assert r["status"] != "failed" or "reason" not in r, r
        assert r["macs"] > 0 and r["params"] > 0 and r["size_bytes"] > 0 and r["p50_ms"] > 0
    # MACs grow with alpha and resolution, as the papers' tables say
    macs = {(r["alpha"], r["resolution"]): r["macs"] for r in rows}
    assert macs[(0.35, 96)] < macs[(0.35, 192)] < macs[(0.5, 192)]
    out = config.out
    data = json.loads((out / "sweep.json").read_text())
    assert [r["variant"] for r in data["rows"]] == [r["variant"] for r in rows]
    assert "| variant |" in (out / "sweep.md").read_text() and "mobilenet_v2_0.5_192" in markdown(rows)
    assert "data:image/png;base64," in (out / "sweep.html").read_text()
    with Image.open(out / "sweep.png") as im:
        assert im.size[0] > 300
    assert not list(out.glob(".*partial*"))
