"""Keras 2 model files (tf.keras <= 2.15) as Keras 3 reads them.

Keras 3 reads a Keras 2 ``.h5`` through its legacy loader (``keras/src/legacy/saving``), which already maps
``batch_input_shape``, a one-element BatchNormalization ``axis`` list, module-less class names, plain-string dtypes
and the old ``inbound_nodes`` lists. What it does not map are keywords Keras 2 wrote that Keras 3 layers no longer
take; the one every MobileNet has is ``"groups": 1`` in each ``DepthwiseConv2D`` config (tf.keras 2.x'
DepthwiseConv2D inherited ``groups`` from Conv; Keras 3's rejects the keyword: "Unrecognized keyword arguments
passed to DepthwiseConv2D: {'groups': 1}", keras-team/keras#18942 and tf-keras issues about Keras 2 h5 files).

:func:`translate_config` rewrites those differences in the config *as JSON*, before anything is deserialised, and
returns one note per kind of difference so the loader can log what it changed. Only differences that do not change
what the model computes are translated (a DepthwiseConv2D with ``groups`` other than 1 is left alone and fails
to load with Keras' own message). Nothing here executes code from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: (class name, config key, the harmless value, why): keywords Keras 2 wrote that Keras 3's layer refuses.
_DROPPED_KEYWORDS: tuple[tuple[str, str, Any, str], ...] = (
    ("DepthwiseConv2D", "groups", 1, "Keras 2 wrote groups=1 into every DepthwiseConv2D; Keras 3 has no such "
                                     "keyword (a depthwise conv is one group per channel either way)"),
)


@dataclass
class Translation:
    """One kind of difference found in the file: what, why, and the layers it was found in."""

    what: str
    why: str
    layers: list[str] = field(default_factory=list)

    def note(self) -> str:
        shown = ", ".join(self.layers[:3]) + (f" and {len(self.layers) - 3} more" if len(self.layers) > 3 else "")
        return f"{self.what} in {len(self.layers)} layer(s) ({shown}): {self.why}"


def translate_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[Translation]]:
    """A Keras 2 model config (the ``.h5``'s ``model_config``, parsed) with the known harmless differences
    rewritten for Keras 3, and one :class:`Translation` per kind of difference found (empty for a Keras 3 file).
    The input is not modified."""
    import copy

    config = copy.deepcopy(config)
    found: dict[str, Translation] = {}

    def record(key: str, what: str, why: str, layer: str) -> None:
        found.setdefault(key, Translation(what, why)).layers.append(layer)

    def visit(layer: dict[str, Any]) -> None:
        cls, cfg = layer.get("class_name"), layer.get("config")
        if not isinstance(cfg, dict):
            return
        name = str(cfg.get("name", layer.get("name", cls)))
        for dcls, key, value, why in _DROPPED_KEYWORDS:
            if cls == dcls and key in cfg and cfg[key] == value:
                del cfg[key]
                record(f"{dcls}.{key}", f"dropped {dcls} {key}={value!r}", why, name)
        if cls == "InputLayer" and "batch_input_shape" in cfg and "batch_shape" not in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")
            record("batch_input_shape", "renamed InputLayer batch_input_shape to batch_shape",
                   "Keras 3's name for the same shape", name)
        if cls == "BatchNormalization" and isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
            cfg["axis"] = int(cfg["axis"][0])
            record("bn_axis", "BatchNormalization axis [n] read as n", "Keras 2 wrote the axis as a list", name)
        for sub in cfg.get("layers", []) if isinstance(cfg.get("layers"), list) else []:
            if isinstance(sub, dict):
                visit(sub)  # nested models (a backbone inside the user's model) and Sequential layers

    visit(config)
    return config, list(found.values())


def keras_version_of(h5_attrs: Any, config: dict[str, Any]) -> str | None:
    """The Keras version that wrote the file (the h5's ``keras_version`` attribute, else the config's)."""
    raw = h5_attrs.get("keras_version") if h5_attrs is not None else None
    if isinstance(raw, bytes):
        raw = raw.decode()
    return str(raw or config.get("keras_version") or "") or None


def load_translated_h5(path: Any, config: dict[str, Any], load: Callable[[Any], Any]) -> Any:
    """Load the ``.h5`` at ``path`` with ``config`` as its ``model_config``: a copy of the file in a temporary
    directory gets the translated config, and ``load(copy_path)`` (Keras' own loader) reads config and weights."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    import h5py

    with tempfile.TemporaryDirectory(prefix="edgeship-h5-") as tmp:
        copy = Path(tmp) / Path(path).name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config).encode()
        return load(copy)
