"""Per-layer error of an int8 TFLite: the SQNR of every quantised activation against its float counterpart.

Both models come from the same calibration step (the float flatbuffer ``calibrate`` returns and the int8 one
``quantize_calibrated`` makes from it), and the MLIR quantiser keeps tensor names, so each int8 activation has a
float twin of the same name. Both are run with every intermediate tensor preserved on calibration samples; the
int8 tensor is dequantised with its own scale and zero point, and SQNR = 10·log10(Σ float² / Σ (float − deq)²).
The result is written beside the artifact as ``<file>.layers.json``, which the validator's HTML report plots.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.fileio import write_bytes_atomic
from edgeship.numerics import sqnr_from_powers
from edgeship.numerics import quantize_values


def layer_sqnr(float_model: bytes, int8_model: bytes, inputs: np.ndarray, max_samples: int = 16,
               keras_model: Any = None) -> dict[str, float]:
    """{layer name: SQNR dB} in graph order, over up to ``max_samples`` preprocessed inputs (N, H, W, C). Layers
    are named by :class:`LayerNames` (``keras_model``: the Keras model the files come from, for exact names
    inside nested models); a layer with several activations (a fused conv and its ReLU6) keeps the first."""
    sqnr = tensor_sqnr(float_model, int8_model, inputs, max_samples)
    names = LayerNames(keras_model).names(sqnr)
    out: dict[str, float] = {}
    for tensor, value in sqnr.items():
        out.setdefault(names[tensor], value)
    return out


def tensor_sqnr(float_model: bytes, int8_model: bytes, inputs: np.ndarray, max_samples: int = 16) -> dict[str, float]:
    """{int8 activation tensor name: SQNR dB} in graph order: the full TFLite tensor names, which are also the
    names of the ops that compute them (what the quantiser's ``denylisted_nodes`` takes)."""
    from edgeship.runtimes.probe import LiteRTProbe

    fi, qi = LiteRTProbe(float_model), LiteRTProbe(int8_model)
    pairs = [(d, fi.index[d["name"]]) for d in _activations(qi) if d["name"] in fi.index]
    signal = {d["name"]: 0.0 for d, _ in pairs}
    noise = dict(signal)
    for x in inputs[:max_samples]:
        x = x[None].astype(np.float32)
        fi.run(x)
        qi.run(quantise_input(x, qi.input))
        for qd, f_index in pairs:
            ref = fi.tensor(f_index).astype(np.float64)
            scale, zp = qd["quantization"]
            deq = (qi.tensor(qd["index"]).astype(np.float64) - zp) * scale
            if deq.shape != ref.shape:
                continue
            signal[qd["name"]] += float(np.sum(ref**2))
            noise[qd["name"]] += float(np.sum((ref - deq) ** 2))
    return {qd["name"]: sqnr_from_powers(signal[qd["name"]], noise[qd["name"]]) for qd, _ in pairs}


def write_layer_report(artifact: Path, sqnr: dict[str, float], samples: int) -> Path:
    path = artifact.with_name(artifact.name + ".layers.json")
    finite = {k: (v if np.isfinite(v) else None) for k, v in sqnr.items()}
    write_bytes_atomic(path, (json.dumps({"samples": samples, "sqnr_db": finite}, indent=1) + "\n").encode())
    return path


def worst(sqnr: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    return sorted(sqnr.items(), key=lambda kv: kv[1])[:n]


#: The suffix TF's name scopes add to a name used twice: Keras 3 traces a model twice on the way to TFLite, so
#: layer 'block_3_project_BN' computes ops under the scope 'block_3_project_BN_1' (op-internal scopes such as
#: 'batchnorm' are not uniquified).
_SCOPE_SUFFIX = re.compile(r"_\d+$")


class LayerNames:
    """TFLite tensor names -> Keras layer names, walking into nested models.

    The MLIR converter names a tensor after the TF op that computes it, whose name is the Keras name scopes
    joined by '/': ``outer_1/block_3_project_BN_1/batchnorm/add_1`` for a top-level layer, and
    ``outer_1/mobilenetv2_1.00_160_1/block_3_project_BN_1/batchnorm/add_1`` for a layer of a backbone model
    inside the user's model (transfer learning); fused ops join several such names with ';' and the first is the
    op's output. A layer is named by its innermost Keras name ('block_3_project_BN'), or by its path of model
    names when that name is shared by layers of different nested models ('backbone_a/conv1'), so names are
    unambiguous (:func:`edgeship.models.loading.unique_layer_names`).

    With ``keras_model`` the scopes are matched against the model's own layer tree, exactly; without it, every
    scope carrying TF's '_N' suffix counts as a layer or model scope (a heuristic that holds for Keras 3
    conversions). Tensors outside any layer scope are the graph's output copies ('output') or keep their name.
    """

    def __init__(self, keras_model: Any = None) -> None:
        from edgeship.models.loading import layer_paths

        self.tree: dict[str, Any] | None = None
        self.root = getattr(keras_model, "name", None)
        paths = [p for p, _ in layer_paths(keras_model)] if keras_model is not None else []
        if keras_model is not None:
            self.tree = {}
            for p in paths:
                node = self.tree
                for part in p[:-1]:
                    node = node.setdefault(part, {})
                node[p[-1]] = None
        self.model_paths = paths

    def path(self, tensor_name: str) -> tuple[str, ...]:
        """The Keras path of the layer computing ``tensor_name`` (nested model names, then the layer's), or ()
        when it is in no layer scope."""
        parts = tensor_name.split(";")[0].split("/")
        if len(parts) < 3:
            return ()
        if self.tree is not None:
            raw_first = parts[0] == self.root  # no uniquifying suffix anywhere: try the scope as it is first
            node: Any = self.tree
            path: list[str] = []
            for scope in parts[1:]:
                stripped = _SCOPE_SUFFIX.sub("", scope)
                hit = next((k for k in ((scope, stripped) if raw_first else (stripped, scope)) if k in node), None)
                if hit is None:
                    break
                path.append(hit)
                node = node[hit]
                if node is None:  # a leaf layer
                    break
            if path:
                return tuple(path)
        scopes = parts[1:-1]
        layered = [_SCOPE_SUFFIX.sub("", c) for c in scopes if _SCOPE_SUFFIX.search(c)]
        return tuple(layered) or (_SCOPE_SUFFIX.sub("", scopes[0]),)

    def names(self, tensor_names: Any) -> dict[str, str]:
        """{tensor name: layer name} for ``tensor_names``, each layer name unambiguous among the model's layers
        and these tensors' layers."""
        from edgeship.models.loading import unique_layer_names

        paths = {t: self.path(t) for t in tensor_names}
        unique = unique_layer_names([*self.model_paths, *(p for p in paths.values() if p)])
        return {t: (unique[p] if p else _unscoped(t)) for t, p in paths.items()}

    def __call__(self, tensor_name: str) -> str:
        return self.names([tensor_name])[tensor_name]


def short_name(tensor_name: str, keras_model: Any = None) -> str:
    """'model_1/block_3_project_BN_1/batchnorm/add_1;model_1/...' -> 'block_3_project_BN';
    'model_1/mobilenetv2_1.00_160_1/block_3_project_BN_1/batchnorm/add_1' -> 'block_3_project_BN' too
    (:class:`LayerNames`)."""
    return LayerNames(keras_model)(tensor_name)


def _unscoped(tensor_name: str) -> str:
    first = tensor_name.split(";")[0]
    return "output" if first.startswith("StatefulPartitionedCall") else first


def _activations(probe: Any) -> list[dict]:
    """The 8-bit tensors an op computes (not weights) of a :class:`edgeship.runtimes.probe.LiteRTProbe`: the ones
    with a per-tensor scale and no constant data."""
    outs = []
    consts = set()
    for d in probe.tensors:
        params = d.get("quantization_parameters", {})
        if len(params.get("scales", [])) > 1:  # per-channel: a weight
            consts.add(d["index"])
    produced = probe.op_outputs()
    for d in probe.tensors:
        if d["index"] in produced and d["index"] not in consts and d["dtype"] in (np.int8, np.uint8):
            outs.append(d)
    return outs


def quantise_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float input as the interpreter input `detail` wants it (8-bit inputs: its own scale and zero point)."""
    if detail["dtype"] == np.float32:
        return x
    scale, zp = detail["quantization"]
    return quantize_values(x, detail["dtype"], scale, zp)
