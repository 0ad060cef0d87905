"""Float fallback: keep the layers that lose the most in float until the int8 model agrees with the float one.

``keep_float="auto"`` ranks the int8 model's layers by their SQNR against float (the per-layer report, worst
first) and leaves them in float one at a time, re-quantising after each, until the int8 model's top-1 agreement
with the float model on the calibration set is at least ``1 - max_drop``; an integer keeps that many of the worst
layers. The quantiser (``mlir_quantize``'s ``denylisted_nodes``) puts a DEQUANTIZE before and a QUANTIZE after
each kept op, so the file stays int8 at its edges and everywhere else.

Agreement is measured on the calibration set because that is the data the user gave for quantising; the
validator measures it again on the held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeship.errors import UserError
from edgeship.quantize.tflite import TFLiteQuantResult, quantize_calibrated

AUTO = "auto"
DEFAULT_MAX_DROP = 0.01  # the shipped int8 agreement gate: 99 %
AUTO_LIMIT = 16  # "auto" gives up after keeping this many layers in float (and says so)


@dataclass
class Fallback:
    result: TFLiteQuantResult
    agreement: float  # int8 vs float top-1 agreement on the calibration set, after the fallback
    agreement_before: float
    target: float | None  # the agreement asked for ("auto"), or None for a count
    kept: list[str]  # short layer names, in the order they were kept

    @property
    def met(self) -> bool:
        return self.target is None or self.agreement >= self.target

    def describe(self) -> dict[str, object]:
        return {"kept_float": self.kept, "kept_float_tensors": self.result.kept_float,
                "calibration_agreement_before": self.agreement_before,
                "calibration_agreement": self.agreement, "target_agreement": self.target, "met": self.met}


def parse_keep_float(value: str | int | None) -> str | int | None:
    """``--keep-float``: "auto", a count of layers, or nothing (0 / None)."""
    if value is None or value == 0 or value == "0":
        return None
    if isinstance(value, int) or str(value).isdigit():
        count = int(value)
        if count < 0:
            raise UserError(f"--keep-float must be 'auto' or a number of layers, got {value}")
        return count
    if str(value).lower() == AUTO:
        return AUTO
    raise UserError(f"--keep-float must be 'auto' or a number of layers, got '{value}'")


def keep_float(calibrated: bytes, first: TFLiteQuantResult, inputs: np.ndarray, sqnr: dict[str, float],
               mode: str | int, *, max_drop: float = DEFAULT_MAX_DROP, progress: Callable[[str], None] | None = None,
               **quant_options) -> Fallback:
    """``first``: the all-int8 result; ``sqnr``: its per-tensor SQNR (:func:`layers.tensor_sqnr`);
    ``quant_options``: what ``first`` was made with (io_dtype, relu6_fixed, input_range)."""
    from edgeship.quantize.layers import short_name
    from edgeship.numerics import top1_agreement

    if not 0 <= max_drop < 1:
        raise UserError(f"--max-drop must be a fraction in [0, 1) (0.01 is one point), got {max_drop}")
    reference = predict(calibrated, inputs)
    before = float(top1_agreement(reference, predict(first.model, inputs)))
    ranked = [name for name, _ in sorted(sqnr.items(), key=lambda kv: kv[1]) if np.isfinite(sqnr[name])]
    target = None if isinstance(mode, int) else 1.0 - max_drop
    limit = mode if isinstance(mode, int) else min(AUTO_LIMIT, len(ranked))
    result, agreement, kept = first, before, []
    while len(kept) < limit and ranked and (target is None or agreement < target):
        kept.append(ranked.pop(0))
        if progress:
            progress(f"float: {short_name(kept[-1])}")
        if target is not None or len(kept) == limit:  # a count needs only the last quantisation
            result = quantize_calibrated(calibrated, keep_float=kept, **quant_options)
            agreement = float(top1_agreement(reference, predict(result.model, inputs)))
    return Fallback(result, agreement, before, target, [short_name(n) for n in kept])


def predict(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Float outputs of a .tflite (float or 8-bit I/O) for preprocessed inputs, one sample at a time."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeship._tf import silenced
    from edgeship.quantize.layers import quantise_input

    with silenced((2,)):
        interp = Interpreter(model_content=model)
        interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for x in inputs:
        interp.set_tensor(i["index"], quantise_input(x[None].astype(np.float32), i))
        interp.invoke()
        y = interp.get_tensor(o["index"]).astype(np.float32)
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            y = (y - zp) * scale
        outs.append(y.reshape(1, -1))
    return np.concatenate(outs)
