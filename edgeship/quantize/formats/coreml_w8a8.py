"""Core ML ``w8a8``: activations and weights int8, calibrated on Linux through edgeship's NumPy executor of the
saved ML Program (coremltools' own activation calibration runs ``MLModel.predict``, macOS only).

Each tensor's range is the 0.001th-99.999th percentile of the values it took on the calibration images (exact
order statistics, :class:`_Tails`); every ReLU6 output, and what a layout op or a zero-padding makes of one, gets
[0, 6] without calibration; the classifier's logits stay float. The ranges are applied with coremltools' own
quantize/dequantize passes, then the weights are quantised as for ``w8`` (:mod:`edgeship.quantize.formats.coreml`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.quantize.formats.coreml_w8 import WEIGHT_INPUTS, _keep_card, quantize_coreml_w8

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
    (:class:`edgeship.runtimes.mlprogram.MLProgram`) run on the shared calibration images (``images``: RGB uint8
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
    from edgeship.runtimes.mlprogram import MLProgram

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
