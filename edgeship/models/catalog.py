"""``edgeship models``: parameters and multiply-adds of the registry's variants or of a user's model.

Counting needs the built model, and building all 86 variants takes about a minute, so the totals of registry
variants ship as a table, ``variant_counts.json`` beside this module, written by ``scripts/variant_counts.py`` from
the built models with the same counting code (tests/models/test_catalog.py checks it covers every variant and
re-counts one of each family). A variant missing from the table, ``--layers`` and a user's model are built and
counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from edgeship.models.registry import VARIANTS, Variant

TABLE_PATH = Path(__file__).with_name("variant_counts.json")
_TOTALS = ("params", "trainable_params", "macs")


def describe_models(names: Sequence[str], *, trust_model: bool = False, layers: bool = False,
                    progress: bool = True) -> list[dict[str, Any]]:
    from edgeship.progress import progress as progress_bar

    targets: list[str] = list(names) or list(VARIANTS)
    table = _table()
    rows = []
    for target in progress_bar(targets, desc="counting", unit="model", enabled=progress, comparable=False):
        variant = VARIANTS.get(target)
        if variant is not None and not layers and (hit := table.get(variant.name)) is not None:
            rows.append(_variant_row(variant) | hit)
            continue
        rows.append(_count_row(target, variant, trust_model=trust_model, layers=layers))
    return rows


def count_variant(variant: Variant) -> dict[str, int]:
    """The totals of a registry variant as the table holds them: {"params", "trainable_params", "macs"} (ints;
    multiply-adds of one image at the variant's resolution), from the built model."""
    row = _count_row(variant.name, variant, trust_model=False, layers=False)
    return {k: int(row[k]) for k in _TOTALS}


def _table() -> dict[str, dict[str, int]]:
    try:
        data = json.loads(TABLE_PATH.read_text())
    except (OSError, ValueError):  # pragma: no cover - a broken install: count instead
        return {}
    return {name: row for name, row in data.items() if isinstance(row, dict) and set(_TOTALS) <= row.keys()}


def _variant_row(v: Variant) -> dict[str, Any]:
    return {"name": v.name, "family": v.full_family, "alpha": v.alpha,
            "resolution": v.resolution}


def _count_row(target: str, variant: Variant | None, *, trust_model: bool, layers: bool) -> dict[str, Any]:
    from edgeship.models.counting import count_model
    from edgeship.models.loading import load_model

    loaded = load_model(target, trust_model=trust_model)
    counts = count_model(loaded.keras_model)
    spec = loaded.spec
    head = _variant_row(variant) if variant else {"name": spec.name, "family": spec.family, "alpha": spec.alpha,
                                                  "resolution": spec.resolution, "path": target}
    body = counts.to_dict(layers=layers)
    return head | body


def format_table(rows: list[dict[str, Any]], layers: bool = False) -> str:
    lines = [f"{'name':<42} {'family':<32} {'alpha':>5} {'res':>4} {'params':>10} {'MACs':>10}"]
    for r in rows:
        alpha = "-" if r.get("alpha") is None else f"{r['alpha']:g}" + ("" if r["alpha"] % 1 else ".0")
        lines.append(f"{r['name']:<42} {r['family']:<32} {alpha:>5} {r['resolution']:>4} "
                     f"{r['params'] / 1e6:>9.2f}M {r['macs'] / 1e6:>9.1f}M")
        if layers:
            lines.append(f"    {'layer':<44} {'kind':<10} {'output':<16} {'params':>10} {'MACs':>12}")
            for layer in r.get("layers", []):
                shape = "x".join(str(d) for d in layer["output_shape"])
                lines.append(f"    {layer['name']:<44} {layer['kind']:<10} {shape:<16} {layer['params']:>10,} "
                             f"{layer['macs']:>12,}")
    return "\n".join(lines)
