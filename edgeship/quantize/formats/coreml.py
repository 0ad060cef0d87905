"""Core ML's quantiser for the stage (:func:`quantize_coreml_file`, named in :mod:`edgeship.formats`): ``w8``
(weight-only int8, :mod:`edgeship.quantize.formats.coreml_w8`) or ``w8a8`` (int8 weights and activations,
:mod:`edgeship.quantize.formats.coreml_w8a8`, calibrated), each with its per-layer SQNR report
(:func:`coreml_layer_sqnr`). The two techniques' modules import nothing from here (no import cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.quantize.common import LAYER_SAMPLES, Job, Made
from edgeship.quantize.formats.coreml_w8 import WEIGHT_INPUTS, exact_symmetric, quantize_coreml_w8
from edgeship.quantize.formats.coreml_w8a8 import CHUNK, _fixed_relu6, quantize_coreml_w8a8
from edgeship.types import Format, Precision

__all__ = ["coreml_layer_sqnr", "exact_symmetric", "quantize_coreml_file", "quantize_coreml_w8", "quantize_coreml_w8a8"]


def coreml_layer_sqnr(float_mlpackage: Path, quantised_mlpackage: Path, images: Any,
                      max_samples: int = 16) -> dict[str, float]:
    """{tensor: SQNR dB} in program order: each activation the quantised program carries in int8 (the input of a
    ``quantize`` op, read back through its ``dequantize``) against the float program's tensor of the same name, on
    up to ``max_samples`` calibration images, both run by the NumPy executor. A program without int8 activations
    (``w8``) is compared at the outputs of its conv and linear ops. (Core ML's converter rescales the two inputs of
    a quantised add to one scale and divides the quantize after it to match, so a tensor is read back through a
    ``dequantize`` with its quantize's own scale and zero point, never from the add itself.)"""
    import numpy as np

    from edgeship.numerics import sqnr_from_powers
    from edgeship.runtimes.mlprogram import MLProgram

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


def quantize_coreml_file(job: Job, precision: Precision, tmp: Path) -> Made:
    """The stage's Core ML quantiser (:mod:`edgeship.quantize.common`): ``w8`` or ``w8a8`` (calibrated on the
    run's calibration images through the NumPy executor) of the float ``.mlpackage`` (exported on the way when
    missing), with its per-layer SQNR report."""

    source = job.float_artifact(Format.COREML)
    recipe = job.recipe(from_int8_tflite=False)
    if precision is Precision.W8A8:
        made = quantize_coreml_w8a8(source, tmp, job.cal.images, relu6_fixed=job.ranges["relu6_fixed"],
                                    progress=job.progress)
    else:
        made = quantize_coreml_w8(source, tmp)
    sqnr = coreml_layer_sqnr(source, tmp, job.cal.images, max_samples=LAYER_SAMPLES)
    recipe.update(made)
    return Made(recipe, {"from": source.name, "input_type": "image", "output": "classLabel"}, sqnr)


def _short(var: str) -> str:
    """'mobilenetv2_0_35_96_1_block_3_project_BN_1_batchnorm_add_1_cast_fp16' -> the same without the converter's
    '_cast_fp16' suffix (Core ML var names carry the whole TensorFlow op path; nothing else is safe to cut)."""
    for suffix in ("_cast_fp16", "_cast_fp32"):
        if var.endswith(suffix):
            return var[: -len(suffix)]
    return var
