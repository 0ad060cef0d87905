"""``edgeship models``: every variant with params and MACs, JSON for machines, per-layer on request, and the
same counts for a user's model."""

from __future__ import annotations

import json

from edgeship.cli import main
from edgeship.models.registry import VARIANTS


def test_models_json_lists_every_variant(capsys, monkeypatch):
    import edgeship.models.catalog as catalog

    def no_build(*a, **k):
        raise AssertionError("a registry variant was built: its counts should come from the shipped table")

    monkeypatch.setattr(catalog, "_count_row", no_build)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(VARIANTS)
    for r in rows:
        assert {"name", "family", "alpha", "resolution", "params", "macs"} <= r.keys()
        assert r["params"] > 0 and r["macs"] > 0
    by = {r["name"]: r for r in rows}
    assert abs(by["mobilenet_v1_1.0_224"]["macs"] - 569e6) / 569e6 < 0.01
    assert abs(by["mobilenet_v2_1.0_224"]["macs"] - 300e6) / 300e6 < 0.01
    # cost scales about with alpha^2 and resolution^2 (the papers' rule of thumb)
    ratio = by["mobilenet_v1_0.5_224"]["macs"] / by["mobilenet_v1_1.0_224"]["macs"]
    assert 0.2 < ratio < 0.3
    ratio = by["mobilenet_v1_1.0_160"]["macs"] / by["mobilenet_v1_1.0_224"]["macs"]
    assert abs(ratio - (160 / 224) ** 2) < 0.02


def test_the_shipped_table_is_what_counting_the_built_variants_gives():
    """variant_counts.json (scripts/variant_counts.py) covers exactly the registry, and one variant of each family,
    built and counted now, has the table's figures; a stale or hand-edited table fails here."""
    from edgeship.models.catalog import TABLE_PATH, count_variant

    table = json.loads(TABLE_PATH.read_text())
    assert list(table) == list(VARIANTS)
    families: dict[str, str] = {}
    for name, v in VARIANTS.items():
        families.setdefault(v.full_family, name)  # the first of each family: its smallest alpha and resolution
    families["mobilenet_v2_1.4_224"] = "mobilenet_v2_1.4_224"  # and the widest
    assert len(families) == 7
    for name in families.values():
        assert count_variant(VARIANTS[name]) == table[name], name


def test_a_variant_missing_from_the_table_is_counted(monkeypatch, capsys):
    import edgeship.models.catalog as catalog

    monkeypatch.setattr(catalog, "_table", lambda: {})
    assert main(["models", "mobilenet_v1_0.25_128", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {k: row[k] for k in ("params", "trainable_params", "macs")} == \
        json.loads(catalog.TABLE_PATH.read_text())["mobilenet_v1_0.25_128"]


def test_models_layers_for_a_variant_and_a_user_model(capsys, tmp_path):
    assert main(["models", "mobilenet_v1_0.25_128", "--layers", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert sum(l["macs"] for l in row["layers"]) == row["macs"]
    first = row["layers"][0]
    assert first["kind"] == "conv" and first["macs"] == 3 * 3 * 3 * 8 * 64 * 64  # 0.25 * 32 channels, stride 2
    from edgeship.models.loading import DEMO_MODEL

    assert main(["models", str(DEMO_MODEL)]) == 0
    out = capsys.readouterr().out
    assert "model" in out and "M" in out.splitlines()[1]


def test_savedmodel_counts_equal_the_keras_counts(capsys, tmp_path):
    from edgeship._tf import silenced
    from edgeship.models.counting import count_keras_model
    from edgeship.models.registry import get_variant

    model = get_variant("mobilenet_v2_0.35_96").build(classes=10)
    with silenced():
        model.export(str(tmp_path / "sm"))
    code = main(["models", str(tmp_path / "sm"), "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    (row,) = json.loads(cap.out)
    want = count_keras_model(model)
    assert row["macs"] == want.macs and row["params"] == want.params
