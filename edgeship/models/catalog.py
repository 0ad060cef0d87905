"""``edgeship models``: parameters and multiply-adds of the registry's variants or of a user's model.

Counting needs the built model, and building all 86 variants takes a while, so the totals of registry variants
are cached per Keras version in the user's cache directory (``$XDG_CACHE_HOME/edgeship``). The cache only saves
time: the counts are computed from the built models the first time, and ``--layers`` always builds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from edgeship.models.registry import VARIANTS, Variant

_CACHE_VERSION = 1


def describe_models(names: Sequence[str], *, trust_model: bool = False, layers: bool = False,
                    progress: bool = True) -> list[dict[str, Any]]:
    from edgeship.progress import progress as progress_bar

    targets: list[str] = list(names) or list(VARIANTS)
    cache = _Cache()
    rows = []
    for target in progress_bar(targets, desc="counting", unit="model", enabled=progress, comparable=False):
        variant = VARIANTS.get(target)
        if variant is not None and not layers and (hit := cache.get(variant.name)) is not None:
            rows.append(_variant_row(variant) | hit)
            continue
        rows.append(_count_row(target, variant, trust_model=trust_model, layers=layers))
        if variant is not None:
            cache.put(variant.name, {k: rows[-1][k] for k in ("params", "trainable_params", "macs")})
    cache.save()
    return rows


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


class _Cache:
    def __init__(self) -> None:
        from importlib import metadata

        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        try:
            keras_version = metadata.version("keras")
        except metadata.PackageNotFoundError:  # pragma: no cover
            keras_version = "unknown"
        self.path = base / "edgeship" / f"model-counts-v{_CACHE_VERSION}-keras-{keras_version}.json"
        self.dirty = False
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, name: str) -> dict[str, Any] | None:
        hit = self.data.get(name)
        return hit if isinstance(hit, dict) and {"params", "trainable_params", "macs"} <= hit.keys() else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.data[name] = value
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            from edgeship.fileio import write_bytes_atomic

            write_bytes_atomic(self.path, json.dumps(self.data, indent=1).encode())
        except OSError:
            pass  # a cache we cannot write only costs time
