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
import warnings
from pathlib import Path

import numpy as np

from edgeship.fileio import write_bytes_atomic
from edgeship.numerics import sqnr_from_powers
from edgeship.numerics import quantize_values


def layer_sqnr(float_model: bytes, int8_model: bytes, inputs: np.ndarray, max_samples: int = 16) -> dict[str, float]:
    """{layer name: SQNR dB} in graph order, over up to ``max_samples`` preprocessed inputs (N, H, W, C)."""
    out: dict[str, float] = {}
    for name, value in tensor_sqnr(float_model, int8_model, inputs, max_samples).items():
        out.setdefault(short_name(name), value)
    return out


def tensor_sqnr(float_model: bytes, int8_model: bytes, inputs: np.ndarray, max_samples: int = 16) -> dict[str, float]:
    """{int8 activation tensor name: SQNR dB} in graph order: the full TFLite tensor names, which are also the
    names of the ops that compute them (what the quantiser's ``denylisted_nodes`` takes)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeship._tf import silenced

    with silenced((2,)), warnings.catch_warnings():  # LiteRT announces its XNNPACK delegate on stderr
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")  # debugging use: it is ours
        fi = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True)
        qi = Interpreter(model_content=int8_model, experimental_preserve_all_tensors=True)
        fi.allocate_tensors()
        qi.allocate_tensors()
    f_by_name = {d["name"]: d for d in fi.get_tensor_details()}
    pairs = [(d, f_by_name[d["name"]]) for d in _activations(qi) if d["name"] in f_by_name]
    signal = {d["name"]: 0.0 for d, _ in pairs}
    noise = dict(signal)
    q_in = qi.get_input_details()[0]
    for x in inputs[:max_samples]:
        x = x[None].astype(np.float32)
        fi.set_tensor(fi.get_input_details()[0]["index"], x)
        qi.set_tensor(q_in["index"], quantise_input(x, q_in))
        fi.invoke()
        qi.invoke()
        for qd, fd in pairs:
            ref = fi.get_tensor(fd["index"]).astype(np.float64)
            scale, zp = qd["quantization"]
            deq = (qi.get_tensor(qd["index"]).astype(np.float64) - zp) * scale
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


def short_name(tensor_name: str) -> str:
    """'model_1/block_3_project_BN_1/batchnorm/add_1;model_1/...' -> 'block_3_project_BN'."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    if len(parts) < 3:
        return "output" if first.startswith("StatefulPartitionedCall") else first
    return re.sub(r"_\d+$", "", parts[1])


def _activations(interp) -> list[dict]:
    """The 8-bit tensors an op computes (not weights): the ones with a per-tensor scale and no constant data."""
    outs = []
    consts = set()
    for d in interp.get_tensor_details():
        params = d.get("quantization_parameters", {})
        if len(params.get("scales", [])) > 1:  # per-channel: a weight
            consts.add(d["index"])
    ops = interp._get_ops_details()  # noqa: SLF001 - the only way to know which tensors are op outputs
    produced = {int(i) for op in ops for i in op["outputs"]}
    for d in interp.get_tensor_details():
        if d["index"] in produced and d["index"] not in consts and d["dtype"] in (np.int8, np.uint8):
            outs.append(d)
    return outs


def quantise_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float input as the interpreter input `detail` wants it (8-bit inputs: its own scale and zero point)."""
    if detail["dtype"] == np.float32:
        return x
    scale, zp = detail["quantization"]
    return quantize_values(x, detail["dtype"], scale, zp)
