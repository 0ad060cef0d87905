"""Full-integer (int8) post-training quantisation of TFLite, with fixed [0, 6] ranges for ReLU6 outputs.

A ReLU6 output always lies in [0, 6], so its int8 parameters need no data: scale 6/255, zero point -128. The
stock converter does not use that: it calibrates every tensor, and a ReLU6 output that never reached 6 on the
calibration set gets a smaller scale and clips the first larger activation met in the field (measured on the
demo: 18 of its 35 ReLU6 outputs never reach 6 on 32 calibration images, the lowest max being 4.50; 3 on all 200).

So the conversion is split in the two steps the converter runs internally (``lite.py``, ``_quantize``):

1. calibrate only (``converter._experimental_calibrate_only = True``): a float flatbuffer whose activation
   tensors carry the observed ``quantization.min``/``max``;
2. set min/max of every ReLU6 output to [0, 6] in that flatbuffer, then quantise it with the same MLIR quantiser
   the converter calls (``tensorflow.lite.python.convert.mlir_quantize``).

With nothing edited, step 2 gives exactly the quantisation parameters of the one-call converter (checked on the
demo), so ``relu6_fixed=False`` is the stock behaviour. In the calibrated TFLite graph the ReLU6s are fused into
CONV_2D / DEPTHWISE_CONV_2D (``fused_activation_function = RELU6``); a stand-alone RELU6 op counts too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as _tfl
from ai_edge_litert.tools import flatbuffer_utils

from edgeship.errors import UserError
from edgeship.models.loading import LoadedModel
from edgeship.quantize.common import Job, Made, portability_record
from edgeship.quantize.options import IoDtype
from edgeship.types import Format, Precision

RELU6_RANGE = (0.0, 6.0)
MIN_RANGE = 1e-3  # narrowest calibrated activation range (see _widen_degenerate_ranges)
_QUANTISED_TYPES = (_tfl.TensorType.INT8, _tfl.TensorType.UINT8)


@dataclass
class TFLiteQuantResult:
    """``model``: the full-integer .tflite, without metadata (the caller adds it).

    ``fixed_tensors`` and ``calibrated_tensors`` partition the model's quantised activation tensors (by name):
    the first got their range without data (ReLU6 outputs -> [0, 6]), the second from the calibration set
    (including the int8/uint8 I/O copies the quantiser adds, which inherit their neighbour's range).

    ``tensor_params``: per activation ``{"scale": [s], "zero_point": [z], "range_source": "fixed"|"calibrated"}``,
    or ``"range_source": "mse"|"percentile"`` with ``"range"`` (the [lo, hi] chosen) and ``"observed_range"`` (the
    calibration's min/max) for a tensor whose range was searched (:mod:`edgeship.quantize.techniques.ranges`);
    per weight/bias tensor a per-channel summary ``{"range_source": "weights", "channels": n,
    "quantized_dimension": d, "scale_min": ..., "scale_max": ..., "zero_point": [distinct values]}`` (the full
    per-channel lists would make a manifest megabytes long on a large MobileNet).
    """

    model: bytes
    fixed_tensors: list[str] = field(default_factory=list)
    relu6_tensors: list[str] = field(default_factory=list)  # the ReLU6 outputs among fixed_tensors
    calibrated_tensors: list[str] = field(default_factory=list)
    tensor_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)  # ops left in float (``keep_float``), by output tensor


def quantize_tflite(loaded: LoadedModel, calibration: np.ndarray, *, io_dtype: str = "uint8",
                    relu6_fixed: bool = True, input_range: tuple[float, float] | None = None) -> TFLiteQuantResult:
    """Full-integer TFLite with per-channel weights.

    ``calibration``: the already preprocessed float32 input batch (N, H, W, 3). ``io_dtype``: the model's input
    and output type; "uint8" by default because MediaPipe Tasks refuses int8 input. ``relu6_fixed=False``
    calibrates the ReLU6 outputs too (the converter's own behaviour, kept for comparison). ``input_range``: the
    input's range as the preprocessing defines it (``Preprocessing.value_range``), instead of the range seen in
    the calibration images: with it a uint8 input's scale and zero point are exactly the normalisation's
    (1/127.5 and 127 for [-1, 1]), which is what MediaPipe assumes when it feeds raw pixels to a uint8 input
    (with the calibrated range the demo got 0.00732 / 121, and MediaPipe-style accuracy fell 0.3 pt).
    """
    io_dtype = IoDtype.parse(str(io_dtype), "io dtype").value  # before the slow step
    return quantize_calibrated(calibrate(loaded, calibration), io_dtype=io_dtype, relu6_fixed=relu6_fixed,
                               input_range=input_range)


def calibrate(loaded: LoadedModel, calibration: np.ndarray) -> bytes:
    """Step 1 alone: the float flatbuffer with the min/max of every activation observed on ``calibration``.

    This is the slow step (a full conversion plus one interpreter run per image); quantising its result is
    ~0.1 s, so comparing variants (fixed/calibrated ReLU6, I/O types) should calibrate once and call
    :func:`quantize_calibrated` per variant.
    """
    from edgeship._tf import tf
    from edgeship.export.tflite import convert

    t = tf()
    batch = _check_calibration(calibration, loaded.spec.input_shape)

    def samples() -> Iterator[list[np.ndarray]]:
        # One image at a time: the calibrator sizes its input from the first sample and keeps that size.
        for i in range(len(batch)):
            yield [batch[i : i + 1]]

    def configure(converter: Any) -> None:
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter._experimental_calibrate_only = True  # noqa: SLF001 - the only way to get the stats out

    with warnings.catch_warnings():
        # Printed by every int8 conversion of a float-input graph; it is about TF1's quantized_input_stats.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return convert(loaded, Precision.FP32, configure=configure)


def quantize_calibrated(calibrated: bytes, *, io_dtype: str = "uint8", relu6_fixed: bool = True,
                        input_range: tuple[float, float] | None = None,
                        keep_float: Sequence[str] = (),
                        activation_ranges: Mapping[str, Mapping[str, Any]] | None = None) -> TFLiteQuantResult:
    """Step 2: pin the ReLU6 outputs to [0, 6] (unless ``relu6_fixed=False``) and quantise with the MLIR
    quantiser, exactly as ``TFLiteConverter`` does after its own calibration. ``keep_float``: ops (named by
    their output tensor) the quantiser leaves in float, with DEQUANTIZE/QUANTIZE around them
    (see :mod:`edgeship.quantize.techniques.fallback`). ``activation_ranges``: ``{tensor name: {"range": [lo, hi],
    "method": "mse"|"percentile", ...}}`` (:func:`edgeship.quantize.techniques.ranges.choose_ranges`) replacing the
    calibrated min/max of those tensors (never of a fixed one); their ``range_source`` becomes the method."""
    from edgeship._tf import silenced, tf

    io_dtype = IoDtype.parse(str(io_dtype), "io dtype").value
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    relu6 = _fix_relu6_ranges(model) if relu6_fixed else []
    fixed = set(relu6) | set(_fix_raw_pixel_ranges(model))
    sources: dict[str, str] = {}
    if activation_ranges:
        from edgeship.quantize.techniques.ranges import apply_ranges

        chosen = {n: r for n, r in activation_ranges.items() if n not in fixed}
        sources = {n: str(chosen[n].get("method", "searched")) for n in apply_ranges(model, chosen)}
    _widen_degenerate_ranges(model)
    if input_range is not None:
        sg = model.subgraphs[0]
        tensor = sg.tensors[sg.inputs[0]]
        tensor.quantization.min = np.array([input_range[0]], np.float32)
        tensor.quantization.max = np.array([input_range[1]], np.float32)
        fixed.add(_name(tensor))
        sources.pop(_name(tensor), None)

    t = tf()
    from tensorflow.lite.python.convert import mlir_quantize  # the quantiser TFLiteConverter itself calls

    io = getattr(t, io_dtype)
    with silenced():  # the C++ quantiser prints its options on stdout
        quantised = mlir_quantize(bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
                                  disable_per_channel=False, input_data_type=io, output_data_type=io,
                                  denylisted_nodes=list(keep_float) or None)
    result = _describe(bytes(quantised), fixed, sources)
    searched = activation_ranges or {}
    for name in sources:  # the searched ranges, beside the scale and zero point the quantiser made of them
        if name in result.tensor_params and name in searched:
            result.tensor_params[name]["range"] = [float(v) for v in searched[name]["range"]]
            if "observed" in searched[name]:
                result.tensor_params[name]["observed_range"] = [float(v) for v in searched[name]["observed"]]
    result.relu6_tensors = relu6
    result.kept_float = list(keep_float)
    return result


#: What a quantisation-aware trained model's int8 recipe says of its ranges (edgeship.models.qat).
QAT_RANGES = "QAT ranges (from the model's FakeQuant ops)"


def quantize_qat(loaded: LoadedModel, *, io_dtype: str = "uint8") -> TFLiteQuantResult:
    """The int8 TFLite of a quantisation-aware trained model: the converter's own QAT conversion
    (``Optimize.DEFAULT`` with no representative dataset), which takes every range from the model's trained
    FakeQuant ops: nothing is calibrated, no ReLU6 range fixed, no range searched. Every activation's
    ``range_source`` is "qat"."""
    from edgeship._tf import tf
    from edgeship.export.tflite import convert

    t = tf()
    io = getattr(t, IoDtype.parse(str(io_dtype), "io dtype").value)

    def configure(converter: Any) -> None:
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.inference_input_type = io
        converter.inference_output_type = io

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        quantised = convert(loaded, Precision.FP32, configure=configure)
    result = _describe(quantised, set(), None)
    for params in result.tensor_params.values():
        if params.get("range_source") == "calibrated":
            params["range_source"] = "qat"
    return result


def convert_weights_only(loaded: LoadedModel, precision: Precision) -> bytes:
    """The TFLite variants that need no calibration: ``w8``, the converter's dynamic-range mode (int8 weights per
    channel, float activations, quantised on the fly by the kernels that can), and ``fp16`` (float16 weights,
    dequantised at load). Float input and output, so clients feed them like the float model."""
    from edgeship._tf import tf
    from edgeship.export.tflite import convert

    if precision is Precision.FP16:
        return convert(loaded, Precision.FP16)
    if precision is not Precision.W8:
        raise UserError(f"TFLite without calibration is w8 or fp16, not {precision.value}")

    def dynamic_range(converter: Any) -> None:
        converter.optimizations = [tf().lite.Optimize.DEFAULT]

    return convert(loaded, Precision.FP32, configure=dynamic_range)


def quantize_tflite_file(job: Job, precision: Precision, tmp: Path) -> Made:
    """The stage's TFLite quantiser (:mod:`edgeship.quantize.common`): the int8 TFLite of the run's statistics,
    statically checked for portability before it is written; or, with no calibration, ``w8``/``fp16``. Each keeps
    edgeship's TFLite metadata (normalisation, labels) so MediaPipe still classifies it."""
    from edgeship.metadata.tflite import add_metadata

    spec = job.loaded.spec
    if precision is not Precision.INT8:
        tmp.write_bytes(add_metadata(convert_weights_only(job.loaded, precision), spec, job.info))
        options = {"mode": "dynamic-range: int8 weights per channel, float activations"
                   if precision is Precision.W8 else "float16 weights"}
        recipe = {"options": options, **({"weight_rounding": job.rounding} if job.rounding else {}),
                  **({"bias_correction": job.correction} if job.correction else {})}
        return Made(recipe, {"input_dtype": "float32", "metadata": "tflite", **options})
    assert job.stats is not None
    recipe = job.recipe(from_int8_tflite=True)
    recipe["portability"] = portability_record(Format.TFLITE, job.stats.int8.model)
    tmp.write_bytes(add_metadata(job.stats.int8.model, spec, job.info))
    recipe["tensors"] = job.stats.int8.tensor_params
    return Made(recipe, {"input_dtype": job.ranges["io_dtype"], "metadata": "tflite", **job.options},
                job.stats.layer_sqnr)


def _check_calibration(calibration: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    x = np.asarray(calibration)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise UserError(f"calibration data must be a non-empty (N, {', '.join(map(str, input_shape))}) batch of "
                        f"preprocessed images, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise UserError("calibration data must be finite floats (the preprocessed model input, not raw pixels)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _relu6_outputs(model: Any) -> Iterator[int]:
    """Indices of tensors produced by a ReLU6: a RELU6 op, or any op with ``fused_activation_function=RELU6``."""
    sg = model.subgraphs[0]
    for op in sg.operators:
        fused = getattr(op.builtinOptions, "fusedActivationFunction", None)
        if _builtin(model, op) == _tfl.BuiltinOperator.RELU6 or fused == _tfl.ActivationFunctionType.RELU6:
            yield from (int(i) for i in op.outputs)


def _widen_degenerate_ranges(model: Any) -> None:
    """Give every calibrated range at least MIN_RANGE of width.

    An activation that barely varied on the calibration set (a random-init classifier's logits do; measured: a
    range ~2e-6 wide on mobilenet_v2_0.35_96) gets a scale near 1e-8. Behind a fixed [0, 6] ReLU6 range, the
    layer's requantisation multiplier (input scale x weight scale / output scale) then exceeds what XNNPACK
    accepts, and LiteRT refuses the file ("TfLiteXNNPackDelegate failed to prepare"). A trained model's
    activations span far more than MIN_RANGE, so this only touches degenerate ones.
    """
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        if q is None or q.min is None or q.max is None or len(q.min) != 1:
            continue
        lo, hi = float(q.min[0]), float(q.max[0])
        if hi - lo < MIN_RANGE:
            mid = (lo + hi) / 2
            q.min = np.array([mid - MIN_RANGE / 2], np.float32)
            q.max = np.array([mid + MIN_RANGE / 2], np.float32)


def _fix_relu6_ranges(model: Any) -> list[str]:
    """Overwrite the calibrated min/max of every ReLU6 output with [0, 6]; returns their names. The quantiser
    turns [0, 6] into scale 6/255 and zero point -128 (int8)."""
    sg = model.subgraphs[0]
    names = []
    for i in _relu6_outputs(model):
        tensor = sg.tensors[i]
        if tensor.quantization is None or tensor.quantization.min is None:
            continue  # not calibrated (not a float activation): nothing to quantise
        tensor.quantization.min = np.array([RELU6_RANGE[0]], np.float32)
        tensor.quantization.max = np.array([RELU6_RANGE[1]], np.float32)
        names.append(_name(tensor))
    return names


def _fix_raw_pixel_ranges(model: Any) -> list[str]:
    """A uint8-input model (:func:`edgeship.models.setups.raw_pixels_layer`): pin the whole-pixel tensors -- the
    layer's round and clip, and every float the model's own cast makes of a uint8 -- to [0, 255], which int8 holds
    exactly (scale 1, zero point -128); a calibrated range (say [0, 253]) would move every pixel off its integer
    before the uint8 cast truncates it. Returns their names."""
    sg = model.subgraphs[0]
    names = []
    for op in sg.operators:
        code = _builtin(model, op)
        inputs = [sg.tensors[int(i)] for i in op.inputs if int(i) >= 0]
        from_uint8 = code == _tfl.BuiltinOperator.CAST and inputs and inputs[0].type == _tfl.TensorType.UINT8
        for i in op.outputs:
            tensor = sg.tensors[int(i)]
            if not (from_uint8 or "raw_pixels_to_uint8" in _name(tensor)):
                continue
            if tensor.type != _tfl.TensorType.FLOAT32 or tensor.quantization is None or tensor.quantization.min is None:
                continue
            tensor.quantization.min = np.array([0.0], np.float32)
            tensor.quantization.max = np.array([255.0], np.float32)
            names.append(_name(tensor))
    return names


def _describe(quantised: bytes, fixed: set[str], sources: Mapping[str, str] | None = None) -> TFLiteQuantResult:
    """Read the parameters back from the quantised model, so the result reports what is in the file."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(quantised))
    sg = model.subgraphs[0]
    constant = {i for i, t in enumerate(sg.tensors) if _has_data(model, t)}
    # a tensor of an integer type without quantisation parameters is a true integer, not a quantised one (the uint8
    # of a uint8-input model's cast, edgeship.models.setups.raw_pixels_layer)
    activations = [i for i, t in enumerate(sg.tensors) if i not in constant and t.type in _QUANTISED_TYPES
                   and t.quantization is not None and t.quantization.scale is not None
                   and len(t.quantization.scale) > 0]
    # A tensor the quantiser added (the QUANTIZE/DEQUANTIZE next to a model input or output) keeps the range of
    # the I/O tensor it converts, so it takes that tensor's source.
    io = {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
    converts = (_tfl.BuiltinOperator.QUANTIZE, _tfl.BuiltinOperator.DEQUANTIZE)
    partner: dict[int, int] = {}
    for op in sg.operators:
        if _builtin(model, op) in converts:
            src, dst = int(op.inputs[0]), int(op.outputs[0])
            if src in io:
                partner[dst] = src
            if dst in io:
                partner[src] = dst
    result = TFLiteQuantResult(model=quantised)
    for i in activations:
        name = _name(sg.tensors[i])
        twin = _name(sg.tensors[partner.get(i, i)])
        source = ("fixed" if name in fixed or twin in fixed
                  else (sources or {}).get(name, (sources or {}).get(twin, "calibrated")))
        (result.fixed_tensors if source == "fixed" else result.calibrated_tensors).append(name)
        q = sg.tensors[i].quantization
        result.tensor_params[name] = {"scale": [float(s) for s in q.scale],
                                      "zero_point": [int(z) for z in q.zeroPoint], "range_source": source}
    for i in sorted(constant):
        q = sg.tensors[i].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            continue
        result.tensor_params[_name(sg.tensors[i])] = {
            "range_source": "weights", "channels": int(len(q.scale)), "quantized_dimension": int(q.quantizedDimension),
            "scale_min": float(np.min(q.scale)), "scale_max": float(np.max(q.scale)),
            "zero_point": sorted({int(z) for z in q.zeroPoint}),
        }
    return result


def _builtin(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)  # opcodes < 127 live in the deprecated field


def _has_data(model: Any, tensor: Any) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "size", 0)))


def _name(tensor: Any) -> str:
    n = tensor.name
    return n.decode() if isinstance(n, bytes) else str(n)
