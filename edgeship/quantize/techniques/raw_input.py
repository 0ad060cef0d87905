"""A uint8-input int8 TFLite that answers for raw pixels: the half step of the input's zero point, compensated.

MediaPipe Tasks feeds a uint8 input tensor the raw 0-255 pixels and ignores the file's NormalizationOptions
(``image_preprocessing_graph.cc``, ``ConfigureImageToTensorCalculator``: ``output_tensor_uint_range`` [0, 255] for a
uint8 tensor); the file's input scale and zero point alone say what a pixel means: ``real = scale * (p - z)``. For
the normalisation ``x = (p - mean) / std`` a pixel means exactly what the model was trained on only when
``scale = 1 / std`` and ``z = mean``. The quantiser gets the first from the preprocessing's range
(:attr:`edgeship.models.spec.Preprocessing.value_range`), but ``z`` is an integer: with MobileNet's mean 127.5 the
quantiser picks 127, so every raw pixel reaches the model ``d = mean - z = 0.5`` steps (0.5 / 127.5 = 0.0039) too
high. No choice of range removes it: any integer zero point is a half step off 127.5, and a scale other than
1/std adds a gain error on top.

The first layer is linear, so the offset can be taken out of its bias (integer domain, per output channel ``c``)::

    acc_c = sum((p - z) * Wq_c) + b_c            (what the file computes for raw pixels)
          = sum((p - mean) * Wq_c) + d * sum(Wq_c) + b_c
    b_c' = b_c - round(d * sum(Wq_c))             (then acc_c' equals the exact normalisation's, to 0.5 LSB)

exact except where the kernel overlaps the zero padding (the runtime pads with the zero point, real 0, which is
right, and the correction subtracts those taps' share too: the image's last row/column for a stride-2 "same" stem).
The same file then reads re-quantised floats ``round(x / scale + z)`` half a step low; a client holding uint8
pixels (MediaPipe, a camera frame) feeds raw pixels, which is what the file is for.

Applied to the int8 TFLite before anything is derived from it, so the int8 ONNX (its twin) carries the same
biases. Measured figures: docs/validation.md ("Feeding like the client").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as _tfl
from ai_edge_litert.tools import flatbuffer_utils

from edgeship.quantize.steps import FlatbufferStep, Need

__all__ = ["compensate_raw_input"]

_CONVS = {_tfl.BuiltinOperator.CONV_2D: (1, 2, 3), _tfl.BuiltinOperator.DEPTHWISE_CONV_2D: (0, 1, 2)}  # sum axes
_PASS = {_tfl.BuiltinOperator.QUANTIZE, _tfl.BuiltinOperator.PAD, _tfl.BuiltinOperator.PADV2}


def compensate_raw_input(model: bytes, input_range: tuple[float, float]) -> tuple[bytes, dict[str, Any]]:
    """``model`` (an int8 TFLite) with the raw-pixel offset of its uint8 input removed from the biases of the
    layers that read the input (through QUANTIZE/PAD). ``input_range``: the preprocessing's (lo, hi) for pixels
    0-255, so the pixel meaning 0 is ``-lo * 255 / (hi - lo)``.

    Returns the model (unchanged when nothing applies) and a record for the recipe: ``{"applied": bool,
    "offset_steps": d, "layers": [...], "max_bias_change": LSBs of the accumulator}`` or, not applied,
    ``{"applied": False, "reason": ...}``."""
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = m.subgraphs[0]
    inp = sg.tensors[sg.inputs[0]]
    if inp.type != _tfl.TensorType.UINT8:
        return model, {"applied": False, "reason": "input is not uint8 (clients quantise floats themselves)"}
    lo, hi = (float(v) for v in input_range)
    scale, zp = float(inp.quantization.scale[0]), int(inp.quantization.zeroPoint[0])
    if abs(scale - (hi - lo) / 255.0) > 1e-6 * scale:
        return model, {"applied": False, "reason": f"input scale {scale:.6g} is not one pixel step "
                                                   f"({(hi - lo) / 255:.6g}): raw pixels cannot be matched by a bias"}
    offset = -lo / scale - zp  # pixel meaning 0, minus the zero point, in steps
    if abs(offset) < 1e-6:
        return model, {"applied": False, "reason": "the zero point already is the normalisation's mean",
                       "offset_steps": 0.0}

    def builtin(op: Any) -> int:
        code = m.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    consumers: dict[int, list[Any]] = {}
    for op in sg.operators:
        for i in op.inputs:
            consumers.setdefault(int(i), []).append(op)
    frontier, convs = [int(sg.inputs[0])], []
    while frontier:
        for op in consumers.get(frontier.pop(), []):
            kind = builtin(op)
            if kind in _PASS:
                src, dst = sg.tensors[op.inputs[0]].quantization, sg.tensors[op.outputs[0]].quantization
                if kind == _tfl.BuiltinOperator.QUANTIZE and abs(float(dst.scale[0]) - float(src.scale[0])) > 1e-9:
                    return model, {"applied": False, "offset_steps": offset,
                                   "reason": "the input is requantised to another scale before its first layer"}
                frontier.append(int(op.outputs[0]))
            elif kind in _CONVS and len(op.inputs) > 2 and op.inputs[2] >= 0:
                convs.append(op)
            else:
                kind_name = next((k for k, v in vars(_tfl.BuiltinOperator).items() if v == kind), str(kind))
                return model, {"applied": False, "offset_steps": offset,
                               "reason": f"the input reaches a {kind_name} op, not a conv with a bias"}
    if not convs:
        return model, {"applied": False, "offset_steps": offset, "reason": "no conv reads the input"}
    layers, worst = [], 0
    for op in convs:
        w_t, b_t = sg.tensors[op.inputs[1]], sg.tensors[op.inputs[2]]
        w = np.frombuffer(bytes(m.buffers[w_t.buffer].data), np.int8).reshape(tuple(w_t.shape)).astype(np.int64)
        b = np.frombuffer(bytes(m.buffers[b_t.buffer].data), np.int32).astype(np.int64)
        change = np.round(offset * w.sum(axis=_CONVS[builtin(op)])).astype(np.int64)
        if change.shape != b.shape:
            return model, {"applied": False, "offset_steps": offset,
                           "reason": f"{_name(sg.tensors[op.outputs[0]])}: weights and bias do not line up"}
        new = np.clip(b - change, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        m.buffers[b_t.buffer].data = np.frombuffer(new.tobytes(), np.uint8)
        layers.append(_name(sg.tensors[op.outputs[0]]))
        worst = max(worst, int(np.abs(change).max()))
    record = {"applied": True, "offset_steps": float(offset), "zero_point": zp, "scale": scale, "layers": layers,
              "max_bias_change": worst,
              "method": "raw uint8 pixels: the input zero point's offset from the normalisation's mean taken out of "
                        "the first layer's int32 bias (exact except at zero-padded borders)"}
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m)), record


def _name(tensor: Any) -> str:
    n = tensor.name
    return n.decode() if isinstance(n, bytes) else str(n)


def _run(ctx: Any, int8: Any) -> tuple[Any, dict[str, Any]]:
    model, record = compensate_raw_input(int8.model, ctx.quant_options["input_range"])
    if not record["applied"]:
        ctx.warn(f"raw-input compensation not applied: {record['reason']}")
    return replace(int8, model=model), record


#: The PTQ step (:mod:`edgeship.quantize.ptq`).
STEP = FlatbufferStep("raw_input_compensation", enabled=lambda o: o.raw_input_compensation, run=_run,
                      needs=(Need.CALIBRATION,))
