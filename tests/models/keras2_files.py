"""Keras 2 files made here, without TF 2.15: a Keras 3 model's ``.h5`` with its ``model_config`` rewritten the way
Keras 2 (tf.keras <= 2.15) wrote it, and a TF SavedModel written by ``tf.saved_model.save`` (the format Keras 2's
``model.save(dir)`` produced).

What Keras 2 wrote differently (read from tf.keras 2.15's ``get_config`` methods and Keras 3's
``keras/src/legacy/saving``): no ``module``/``registered_name`` on any object; dtype as a plain string
(``"float32"``), not a ``DTypePolicy`` object; ``batch_input_shape`` in ``InputLayer`` (Keras 3: ``batch_shape``);
``"groups": 1`` in every ``DepthwiseConv2D`` (Keras 3 rejects the keyword); BatchNormalization's ``axis`` as a
list (``[3]``); ``inbound_nodes`` as ``[[[layer, node, tensor, kwargs], ...]]``; initialisers without Keras 3's
``input_axes``/``output_axes``; no ``optional``, ``synchronized``, ``lora_rank``, ``quantization_config``,
``build_config``; the top ``class_name`` ``"Functional"`` (2.4-2.15) or ``"Model"`` (older), with
``keras_version`` and ``backend`` beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

_KERAS3_ONLY = {"module", "registered_name", "optional", "synchronized", "lora_rank", "lora_alpha",
                "quantization_config", "build_config", "compile_config", "input_axes", "output_axes", "gamma_policy"}


def keras2_config(config: dict[str, Any], top_class: str = "Functional") -> dict[str, Any]:
    """A Keras 3 model config (``model.get_config()`` wrapped as the h5's ``model_config``) as Keras 2 wrote it."""

    def obj(o: Any) -> Any:
        if isinstance(o, list):
            return [obj(v) for v in o]
        if not isinstance(o, dict):
            return o
        if o.get("class_name") in ("DTypePolicy", "Policy") and isinstance(o.get("config"), dict):
            return o["config"].get("name", "float32")
        out = {k: obj(v) for k, v in o.items() if k not in _KERAS3_ONLY}
        if "inbound_nodes" in o:
            out["inbound_nodes"] = [_legacy_node(n) for n in o["inbound_nodes"]]
        cls, cfg = out.get("class_name"), out.get("config")
        if isinstance(cfg, dict):
            if cls == "InputLayer" and "batch_shape" in cfg:
                cfg["batch_input_shape"] = cfg.pop("batch_shape")
            if cls == "DepthwiseConv2D":
                cfg["groups"] = 1
            if cls == "BatchNormalization" and cfg.get("axis") == -1:
                cfg["axis"] = [3]
        return out

    legacy = obj(config)
    legacy["class_name"] = top_class
    legacy["keras_version"] = "2.15.0"
    legacy["backend"] = "tensorflow"
    return legacy


def _legacy_node(node: Any) -> Any:
    if isinstance(node, list):
        return node
    tensors = []

    def walk(a: Any) -> None:
        if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
            tensors.append([*a["config"]["keras_history"], {}])
        elif isinstance(a, (list, tuple)):
            for v in a:
                walk(v)
        elif isinstance(a, dict):
            for v in a.values():
                walk(v)

    walk(node.get("args", []))
    return tensors


def write_keras2_h5(model: Any, path: str | Path, top_class: str = "Functional") -> Path:
    """Save ``model`` as ``.h5`` and rewrite its ``model_config`` attribute as Keras 2 wrote it."""
    import h5py

    path = Path(path)
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(keras2_config(config, top_class)).encode()
        f.attrs["keras_version"] = "2.15.0"
    return path


def write_saved_model(model: Any, path: str | Path) -> Path:
    """A SavedModel of ``model``'s forward pass with a ``serving_default`` signature, written by
    ``tf.saved_model.save`` of a ``tf.Module`` (what Keras 2's ``model.save(dir)`` produced: graph + variables)."""
    from edgeship._tf import tf

    t = tf()
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    module = t.Module()
    module.model = model
    shape = (None, *model.input_shape[1:])

    @t.function(input_signature=[t.TensorSpec(shape, t.float32, name="input_1")])
    def serve(x):
        return {"predictions": model(x, training=False)}

    module.serve = serve
    t.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path
