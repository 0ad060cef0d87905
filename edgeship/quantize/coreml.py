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

The quantised program keeps the float model's description (model card, user-defined metadata, input/output
descriptions, classifier labels, image input): coremltools passes it through; :func:`_keep_card` restores any
field that did not survive, and adds ``edgeship.quantization`` to the user-defined metadata.
"""

from __future__ import annotations

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
    with silenced():  # tqdm bars of the pass and of the MIL pipelines run on the result
        quantised = linear_quantize_weights(
            mlmodel, OptimizationConfig(op_name_configs={w[2]: config for w in chosen}))
    recipe_head = {"mode": MODE, "dtype": DTYPE, "granularity": GRANULARITY, "weight_threshold": WEIGHT_THRESHOLD}
    _keep_card(quantised, mlmodel, recipe_head)
    with silenced():
        quantised.save(str(out_path))

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


ACTIVATION_MODE = "linear"  # affine: a ReLU6 output's [0, 6] becomes uint8 with scale 6/255, nothing wasted
W8A8_SPEC_VERSION = 8  # iOS17: the first with quantize/dequantize ops
RELU6_OPS = ("relu6",)
# Ops whose output holds exactly the values of their input (a ReLU6's [0, 6] stays [0, 6] through them).
LAYOUT_OPS = ("transpose", "reshape", "squeeze", "expand_dims")
# The calibrated range of a tensor runs from its 0.001th to its 99.999th percentile over every value it took on the
# calibration images (ONNX Runtime's percentile calibrator's default), so a handful of extreme values in 200 images
# does not set the scale for all the others; 100 gives plain min/max. On the demo (200 images, 360 held out):
# min/max 98.9 % top-1 agreement at 24.2 dB logits SQNR, 99.999th percentile 100 % at 24.0 dB.
PERCENTILE = 99.999
CHUNK = 16  # calibration images per executor call


class _Tails:
    """The exact ``p``-th percentile range of a tensor over the calibration set, without keeping the set's values:
    only the ``k`` largest and ``k`` smallest values seen, ``k`` = the number of values beyond the percentile."""

    def __init__(self, total: int, percentile: float) -> None:
        import math

        self.k = max(1, math.floor(total * (100.0 - percentile) / 100.0) + 1)
        self.high: Any = None
        self.low: Any = None

    def add(self, value: Any) -> None:
        import numpy as np

        v = np.asarray(value, dtype=np.float32).ravel()
        if self.high is None:
            high = low = v
        elif self.high.size < self.k:  # the tails are not full yet: everything is a candidate
            high, low = np.concatenate([self.high, v]), np.concatenate([self.low, v])
        else:  # only values beyond the current tails can enter them
            high = np.concatenate([self.high, v[v > self.high.min()]])
            low = np.concatenate([self.low, v[v < self.low.max()]])
        k = min(self.k, high.size)
        self.high = np.partition(high, high.size - k)[high.size - k:] if high.size > k else high
        k = min(self.k, low.size)
        self.low = np.partition(low, k - 1)[:k] if low.size > k else low

    def range(self) -> dict[str, float]:
        """``{"rmin", "rmax"}``, widened to hold 0 (an affine int8 range must represent zero exactly)."""
        return {"rmin": min(float(self.low.max()), 0.0), "rmax": max(float(self.high.min()), 0.0)}


def activation_ranges(program: Any, images: Any, *, percentile: float = PERCENTILE,
                      progress: Any = None) -> dict[str, dict[str, float]]:
    """``{var: {"rmin", "rmax"}}`` for every float tensor the program computes, over the calibration ``images``
    (RGB uint8 (N, H, W, 3)) run through the NumPy executor: the ``percentile`` range of all the values it took."""
    import numpy as np

    skip = set(program.outputs) | {program.probabilities}
    tails: dict[str, _Tails] = {}
    for start, stop, values in program.execute_many(images, CHUNK, keep_intermediates=True):
        for name, value in values.items():
            if name in skip or not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                continue
            if name not in tails:  # values per image x images
                tails[name] = _Tails(value.size // (stop - start) * len(images), percentile)
            tails[name].add(value)
        if progress:
            progress(f"coreml w8a8 calibration {stop}/{len(images)}")
    return {name: t.range() for name, t in tails.items()}


def _fixed_relu6(program: Any) -> list[str]:
    """Every tensor whose range is [0, 6] by construction: ReLU6 outputs; what a layout op or a zero-padding makes
    of one; and a tensor whose only reader is a layout op leading to a ReLU6 (the conv -> transpose -> relu6 at
    MobileNet's end), where quantising to [0, 6] clips exactly what the ReLU6 would."""
    fixed = {op.outputs[0] for op in program.ops if op.type in RELU6_OPS}
    for op in program.ops:  # forward, in program order
        if op.type in LAYOUT_OPS + ("pad",) and op.inputs["x"][0] in fixed:
            if op.type == "pad" and not (program.constants.get(op.inputs["mode"][0]) == "constant"
                                         and 0.0 <= float(program.constants.get(op.inputs["constant_val"][0])) <= 6.0):
                continue
            fixed.add(op.outputs[0])
    for op in reversed(program.ops):  # backward, from each ReLU6 through the layout ops before it
        if op.type in LAYOUT_OPS + RELU6_OPS and op.outputs[0] in fixed:
            source = op.inputs["x"][0]
            if source in program.producers and len(program.readers.get(source, [])) == 1:
                fixed.add(source)
    return [out for op in program.ops for out in op.outputs if out in fixed]


def quantize_coreml_w8a8(float_mlpackage: Path, out_path: Path, images: Any, *, relu6_fixed: bool = True,
                         percentile: float = PERCENTILE, progress: Any = None) -> dict[str, Any]:
    """Core ML ``w8a8``: activations and weights int8, calibrated here, on Linux.

    coremltools' ``linear_quantize_activations`` calibrates through ``MLModel.predict`` (macOS only). Here the
    activation ranges come from edgeship's NumPy executor of the saved program
    (:class:`edgeship.validate.mlprogram.MLProgram`) run on the shared calibration images (``images``: RGB uint8
    (N, H, W, 3)): the ``percentile`` range of each tensor (:func:`activation_ranges`); every ReLU6 output gets
    [0, 6] without calibration (unless ``relu6_fixed=False``), and so do the tensors that are a ReLU6's by
    construction (:func:`_fixed_relu6`); the tensors before the first conv get the preprocessing's range (a black
    and a white image). The ranges then go through coremltools' own passes, as ``linear_quantize_activations``
    applies them (``insert_prefix/suffix_quantize_dequantize_pair``, then ``dequantize_quantize_pair_elimination``),
    which put quantize/dequantize pairs around conv, add, pooling and linear ops; the classifier's logits stay
    float (Core ML's outputs are float: quantising them would only round the scores). The weights are then
    quantised as for ``w8`` (:func:`quantize_coreml_w8`). The program needs iOS17.
    """
    import tempfile

    import numpy as np

    from edgeship._tf import import_quietly, silenced
    from edgeship.validate.mlprogram import MLProgram

    ct = import_quietly("coremltools")
    import coremltools.optimize.coreml._quantization_passes  # noqa: F401 - registers the compression passes
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    float_mlpackage, out_path = Path(float_mlpackage), Path(out_path)
    program = MLProgram(float_mlpackage)
    (image,) = program.inputs
    stats = activation_ranges(program, images, percentile=percentile, progress=progress)
    # The input's range is the preprocessing's, not what the calibration images happened to span (as for TFLite):
    # the tensors before the first conv (the image input's scale/bias and cast) see a black and a white image.
    first_conv = next((i for i, op in enumerate(program.ops) if op.type in WEIGHT_INPUTS), 0)
    pre = {out for op in program.ops[:first_conv] for out in op.outputs} | {image.name}
    extremes = activation_ranges(program, np.stack([np.full(images.shape[1:], level, np.uint8) for level in (0, 255)]),
                                 percentile=100.0)
    stats.update({name: extremes[name] for name in pre if name in stats})
    fixed = _fixed_relu6(program) if relu6_fixed else []
    stats.update({name: {"rmin": 0.0, "rmax": 6.0} for name in fixed})

    # Ops whose result would only be quantised to be read back as float: those computing a program output.
    final = _final_ops(program)
    config = OpLinearQuantizerConfig(mode=ACTIVATION_MODE, dtype="int8")
    passes = []
    for name, skip in (("compression::insert_prefix_quantize_dequantize_pair", set()),
                       ("compression::insert_suffix_quantize_dequantize_pair", final)):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", OptimizationConfig(global_config=config,
                                                                        op_name_configs={n: None for n in skip}))])
        graph_pass.set_options([PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    with silenced():
        mlmodel = ct.models.MLModel(str(float_mlpackage), skip_model_load=True)
        a8 = model_utils._apply_graph_pass(mlmodel, passes, spec_version=W8A8_SPEC_VERSION,  # noqa: SLF001
                                           pymil_load_func=milproto_load.load, skip_model_load=True)
    _keep_card(a8, mlmodel, {})
    with tempfile.TemporaryDirectory() as tmp:
        a8_path = Path(tmp) / "a8.mlpackage"
        with silenced():
            a8.save(str(a8_path))
        recipe = quantize_coreml_w8(a8_path, out_path)
    quantised = MLProgram(out_path)
    activations = {}
    for op in quantised.ops:
        if op.type == "quantize":
            scale = quantised.constants.get(op.inputs["scale"][0])
            zp = quantised.constants.get(op.inputs["zero_point"][0]) if "zero_point" in op.inputs else 0
            dtype = quantised.constants.get(op.inputs["output_dtype"][0])
            source = op.inputs["input"][0]
            activations[source] = {"scale": [float(np.asarray(scale).ravel()[0])],
                                   "zero_point": [int(np.asarray(zp).ravel()[0])], "dtype": str(dtype),
                                   "range_source": "fixed" if source in fixed or source in pre else "calibrated"}
    recipe.update({"activations": "int8 affine (ReLU6 outputs uint8 [0, 6])" if relu6_fixed else "int8 affine",
                   "activation_mode": ACTIVATION_MODE, "calibrated_with": "edgeship NumPy ML Program executor",
                   "range_rule": "min/max" if percentile >= 100 else
                   f"{100 - percentile:g}th to {percentile:g}th percentile of the calibration values",
                   "float_outputs": sorted(final), "relu6_fixed": fixed, "tensors": activations})
    return recipe


def _final_ops(program: Any) -> set[str]:
    """The conv/linear ops whose results reach the program's outputs through casts, softmax and the classifier
    only (nothing that could read int8): the classifier's logits."""
    outputs = set(program.outputs)

    def final(name: str) -> bool:
        after = program.readers.get(name, [])
        return (name in outputs and not after) or (bool(after) and all(
            r.type in ("cast", "softmax", "classify") and all(final(o) for o in r.outputs) for r in after))

    return {op.name for op in program.ops if op.type in WEIGHT_INPUTS and all(final(o) for o in op.outputs)}


def coreml_layer_sqnr(float_mlpackage: Path, quantised_mlpackage: Path, images: Any,
                      max_samples: int = 16) -> dict[str, float]:
    """{tensor: SQNR dB} in program order: each activation the quantised program carries in int8 (the input of a
    ``quantize`` op, read back through its ``dequantize``) against the float program's tensor of the same name, on
    up to ``max_samples`` calibration images, both run by the NumPy executor. A program without int8 activations
    (``w8``) is compared at the outputs of its conv and linear ops. (Core ML's converter rescales the two inputs of
    a quantised add to one scale and divides the quantize after it to match, so a tensor is read back through a
    ``dequantize`` with its quantize's own scale and zero point, never from the add itself.)"""
    import numpy as np

    from edgeship.validate.metrics import sqnr_from_powers
    from edgeship.validate.mlprogram import MLProgram

    flt, qnt = MLProgram(Path(float_mlpackage)), MLProgram(Path(quantised_mlpackage))
    names = flt.producers.keys()
    producer = qnt.producers
    scale = {op.outputs[0]: np.asarray(qnt.constants.get(op.inputs["scale"][0])) for op in qnt.ops
             if op.type == "dequantize"}
    # An add the converter rescaled (one input dequantised at scale 1, the other at the ratio of the two): its
    # dequantizes show the add's internal view, not the tensors' values.
    rescaled = {op.name for op in qnt.ops if op.type == "add"
                and all(producer.get(op.inputs[k][0]) is not None and producer[op.inputs[k][0]].type == "dequantize"
                        for k in ("x", "y"))
                and any(np.all(scale[op.inputs[k][0]] == 1) for k in ("x", "y"))}
    pairs: dict[str, str] = {}  # float tensor -> a dequantize giving back its int8 values
    for op in qnt.ops:
        q = producer.get(op.inputs["input"][0]) if op.type == "dequantize" else None
        if q is None or q.type != "quantize" or q.inputs["input"][0] not in names:
            continue
        if all(r.type == "add" and r.name in rescaled for r in qnt.readers.get(op.outputs[0], [])):
            continue
        pairs.setdefault(q.inputs["input"][0], op.outputs[0])
    if not pairs:
        pairs = {op.outputs[0]: op.outputs[0] for op in qnt.ops if op.type in WEIGHT_INPUTS and op.outputs[0] in names}
    # A tensor fixed to [0, 6] because a ReLU6 follows (conv -> transpose -> relu6) is compared with what the ReLU6
    # keeps of it, when its int8 range is that [0, 6].
    clipped = set(_fixed_relu6(flt))
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)

    def run(program: Any, part: Any) -> dict[str, Any]:  # every tensor of the chunk, batch dimension first
        parts: dict[str, list[Any]] = {}
        for _, _, values in program.execute_many(part, CHUNK, keep_intermediates=True):
            for name, value in values.items():
                if isinstance(value, np.ndarray) and value.ndim:
                    parts.setdefault(name, []).append(value)
        return {name: np.concatenate(v) for name, v in parts.items()}

    for start in range(0, min(max_samples, len(images)), CHUNK):
        part = images[start:min(start + CHUNK, max_samples)]
        ref, got = run(flt, part), run(qnt, part)
        for name, read in pairs.items():
            a, b = np.asarray(ref[name], np.float64), np.asarray(got[read], np.float64)
            if name in clipped and b.min() >= 0:
                a = np.clip(a, 0.0, 6.0)
            if a.shape == b.shape:
                signal[name] += float(np.sum(a**2))
                noise[name] += float(np.sum((a - b) ** 2))
    order = [out for op in flt.ops for out in op.outputs if out in pairs]
    return {_short(name): sqnr_from_powers(signal[name], noise[name]) for name in order}


def _short(var: str) -> str:
    """'mobilenetv2_0_35_96_1_block_3_project_BN_1_batchnorm_add_1_cast_fp16' -> the same without the converter's
    '_cast_fp16' suffix (Core ML var names carry the whole TensorFlow op path; nothing else is safe to cut)."""
    for suffix in ("_cast_fp16", "_cast_fp32"):
        if var.endswith(suffix):
            return var[: -len(suffix)]
    return var
