"""Training set-ups the converters handle once the loaded model is put in their terms (issue 24, item 4): a uint8
image input (TF-Hub and Object Detection API SavedModels, a Keras ``Input(dtype="uint8")``), a dynamic spatial size
fixed with ``--input-size HxW``, and a model trained under ``mixed_float16`` (or ``float16``) rebuilt under float32.

Every function here takes the model as loaded and returns the model edgeship converts, with one line saying what
changed. Nothing here reads a file: the trust boundary is :mod:`edgeship.models.loading`'s, and the layer defined
here is built in this process and never saved.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from edgeship.errors import UserError

#: The dtype policies whose compute dtype the TFLite converter cannot take (Conv2D and MatMul in float16)
_HALF = ("float16", "bfloat16")
INPUT_SIZE_HINT = "give --input-size HxW (e.g. 224x224; [model] input_size in edgeship.toml)"


def parse_input_size(value: Any, what: str = "--input-size") -> tuple[int, int] | None:
    """``"HxW"`` (also ``"H,W"``), or ``[H, W]`` -> (H, W); None stays None. Anything else: one :class:`UserError`
    line naming ``what``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts: list[Any] = list(value)
    elif isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[xX,*]", value.strip())]
    else:
        parts = []
    try:
        if len(parts) != 2 or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        size = (int(parts[0]), int(parts[1]))
    except (TypeError, ValueError):
        raise UserError(f"{what} must be HxW in pixels (e.g. 224x224) or [H, W], got {value!r}") from None
    if min(size) < 1 or max(size) > 8192:
        raise UserError(f"{what} must be between 1 and 8192 pixels a side, got {size[0]}x{size[1]}")
    return size


def describe_inputs(specs: list[tuple[str, Any, Any]]) -> str:
    """'image (None, 96, 96, 3) float32, meta (None, 4) int32' for [(name, shape, dtype)]."""
    return ", ".join(f"{name} {tuple(None if d is None else int(d) for d in shape)} {_dtype_name(dtype)}"
                     for name, shape, dtype in specs)


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype))


def refuse_several_inputs(what: str, specs: list[tuple[str, Any, Any]]) -> None:
    """One line naming every input, when there is more than one (or none)."""
    if len(specs) != 1:
        raise UserError(f"{what} has {len(specs)} inputs ({describe_inputs(specs) or 'none'}): edgeship needs one "
                        "image input (batch, height, width, 3); export a model that takes the image alone")


def fixed_shape(what: str, shape: tuple[Any, ...], input_size: tuple[int, int] | None,
                default_size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The (H, W, C) input shape edgeship converts: ``shape`` (no batch dimension) with a dynamic height and width
    fixed to ``input_size``. One :class:`UserError` line for a dynamic size without ``input_size``, or an
    ``input_size`` a fixed size contradicts. ``default_size``: the size a dynamic one takes when no ``input_size``
    is given (validate: the size the files were made at). A shape that is not (H, W, C) is returned as it is
    (derive_spec says what is wrong with it)."""
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) != 3:
        return shape
    dynamic = shape[0] is None or shape[1] is None
    if dynamic and input_size is None:
        input_size = default_size
    if dynamic and input_size is None:
        raise UserError(f"{what} has a dynamic input size {shape}: {INPUT_SIZE_HINT}")
    if input_size is None:
        return shape
    for given, own in zip(input_size, shape[:2]):
        if own is not None and own != given:
            raise UserError(f"{what} takes {_size(shape)} images, not --input-size {input_size[0]}x{input_size[1]}: "
                            "drop --input-size (it fixes a dynamic size only)")
    return (*input_size, shape[2])


def _size(shape: tuple[Any, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape[:2])


# ------------------------------------------------------------------------------------------ uint8 input
@lru_cache(maxsize=None)
def raw_pixels_layer() -> type:
    """The Keras layer that turns float32 raw pixels (0-255) into the uint8 a model's input takes: round to the
    nearest integer, clip to [0, 255], cast. Not a Lambda: a layer class of edgeship's own (defined on first use,
    so importing this module does not import Keras)."""
    from edgeship._tf import keras

    k = keras()
    base: Any = k.layers.Layer

    class RawPixelsToUint8(base):
        """float32 pixels 0-255 -> uint8 (rounded, clipped): what a uint8 image input receives from a camera."""

        def call(self, x: Any) -> Any:
            return k.ops.cast(k.ops.clip(k.ops.round(x), 0.0, 255.0), "uint8")

        def compute_output_spec(self, x: Any) -> Any:
            return k.KerasTensor(x.shape, dtype="uint8")

    return RawPixelsToUint8


def takes_uint8(km: Any) -> bool:
    """Whether ``km`` begins with :func:`raw_pixels_layer` (its wrapped model or SavedModel takes uint8)."""
    cls = raw_pixels_layer()
    return any(isinstance(layer, cls) for layer in getattr(km, "layers", [])[:3])


def float_input_for_uint8(km: Any) -> Any:
    """A Keras model with a uint8 input, wrapped so it takes float32 raw pixels (0-255) and casts inside."""
    from edgeship._tf import keras

    k = keras()
    inp = k.Input(tuple(km.input_shape[1:]), dtype="float32", name="image")
    return k.Model(inp, km(raw_pixels_layer()(name="raw_pixels_to_uint8")(inp)), name=km.name)


# ------------------------------------------------------------------------------------------ Keras rebuilds
def half_precision_policies(km: Any) -> list[str]:
    """The names of ``km``'s dtype policies that compute in float16 or bfloat16 (mixed_float16, float16...)."""
    from edgeship.models.loading import walk_layers

    names = []
    for layer in walk_layers(km):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and getattr(policy, "compute_dtype", None) in _HALF:
            names.append(str(getattr(policy, "name", policy.compute_dtype)))
    return list(dict.fromkeys(names))


def _float32_config(config: Any) -> Any:
    """``config`` (a Keras model's get_config()) with every float16/bfloat16 dtype and dtype policy as float32."""
    if isinstance(config, list):
        return [_float32_config(c) for c in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") in ("DTypePolicy", "Policy", "FloatDTypePolicy") and isinstance(config.get("config"),
                                                                                               dict):
        name = str(config["config"].get("name", ""))
        if name.endswith(_HALF):
            return "float32"
    out = {}
    for key, value in config.items():
        if key == "dtype" and isinstance(value, str) and value.endswith(_HALF):
            out[key] = "float32"
        else:
            out[key] = _float32_config(value)
    return out


def _with_input_shape(config: dict[str, Any], hw: tuple[int, int]) -> bool:
    """Set the (first) InputLayer's batch_shape in ``config`` to (None, H, W, C); False when there is none."""
    for layer in config.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            cfg = layer["config"]
            key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
            shape = cfg.get(key)
            if shape is None or len(shape) != 4:
                return False
            cfg[key] = [shape[0], hw[0], hw[1], shape[3]]
            return True
    return False


def rebuild(km: Any, *, float32: bool = False, input_size: tuple[int, int] | None = None) -> Any:
    """``km`` rebuilt from its config, every float16 policy as float32 (``float32``) and/or its input at
    ``input_size`` (H, W), with its own weights (float16 ones widened to float32, exactly). Falls back, for the input
    size only, to calling the model on a new fixed-size Input (the model then nests)."""
    from edgeship._tf import keras, silenced

    k = keras()
    config = km.get_config()
    if float32:
        config = _float32_config(config)
    resized = input_size is None or _with_input_shape(config, input_size)
    if resized:
        with silenced():
            rebuilt = type(km).from_config(config)
        weights = [np.asarray(w) for w in km.get_weights()]
        rebuilt.set_weights([w.astype(np.float32) if w.dtype.name in _HALF else w for w in weights])
        return rebuilt
    base = rebuild(km, float32=True) if float32 else km
    assert input_size is not None
    inp = k.Input((*input_size, int(km.input_shape[-1])), name="image")
    return k.Model(inp, base(inp), name=km.name)


def fit_for_conversion(km: Any, what: str, input_size: tuple[int, int] | None, notes: list[str],
                       default_size: tuple[int, int] | None = None) -> Any:
    """``km`` as the converters take it: one image input (several refused in one line naming them), a dynamic size
    fixed to ``input_size`` (refused without it; an ``input_size`` a fixed size contradicts, refused), a float16
    compute policy rebuilt under float32 (said in ``notes``), a uint8 input fed float32 raw pixels cast inside."""
    inputs = list(getattr(km, "inputs", None) or [])
    refuse_several_inputs(what, [(getattr(i, "name", f"input_{n}"), tuple(i.shape), getattr(i, "dtype", "?"))
                                 for n, i in enumerate(inputs)])
    shape = tuple(km.input_shape[1:])
    fixed = fixed_shape(what, shape, input_size, default_size)
    resize = tuple(fixed) != tuple(shape)
    half = half_precision_policies(km)
    if resize or half:
        km = rebuild(km, float32=bool(half), input_size=(int(fixed[0]), int(fixed[1])) if resize else None)
    if half:
        notes.append(f"{what} was trained under {'/'.join(half)}: converted under float32 (weights cast exactly)")
    if _dtype_name(km.inputs[0].dtype) == "uint8":
        km = float_input_for_uint8(km)
    return km
