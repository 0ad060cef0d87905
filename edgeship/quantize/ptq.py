"""The PTQ techniques as one ordered, named pipeline: :data:`WEIGHT_STEPS` on the float model's weights, then the
conversion (calibration, activation ranges, int8), then :data:`FLATBUFFER_STEPS` on the int8 flatbuffer. Each step
is declared in its module under ``techniques/`` (:mod:`edgeship.quantize.steps`); which run is the options' (the
presets are data: :data:`edgeship.quantize.options.PTQ_PRESETS`). Adding a technique: its module with a ``STEP``,
and one line in one of the two lists.

State: :func:`fit_weights` and :func:`compute_statistics` return values and leave the Keras model as they found
it. The converters read the weights from the Keras model, so the weight steps must be in the model while a file
with int8 weights is made: :func:`weights_applied` is that one visible, scoped swap (restored exactly on exit).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from edgeship.quantize.steps import FlatbufferContext, Need
from edgeship.quantize.techniques import (adaround, bias_correction, equalization, fallback, int8_bias_correction,
                                          raw_input)

if TYPE_CHECKING:
    from edgeship.export.common import ModelInfo
    from edgeship.models.loading import LoadedModel
    from edgeship.quantize.calibration import CalibrationSet
    from edgeship.quantize.common import Statistics
    from edgeship.quantize.options import QuantizeOptions

#: The steps on the float weights, in the order they are fitted and applied (each measured after the ones before).
WEIGHT_STEPS = (equalization.STEP, adaround.STEP, bias_correction.STEP)
#: The steps on the int8 flatbuffer, in the order they run (the int8 bias correction before the raw-input
#: compensation: it is measured with the float feed).
FLATBUFFER_STEPS = (fallback.STEP, int8_bias_correction.STEP, raw_input.STEP)


def needs(options: QuantizeOptions, need: Need) -> bool:
    """Whether an enabled step needs ``need``."""
    return any(s.enabled(options) and need in s.needs for s in (*WEIGHT_STEPS, *FLATBUFFER_STEPS))


def fit_weights(loaded: LoadedModel, cal: CalibrationSet, options: QuantizeOptions) -> dict[str, Any]:
    """Each enabled weight step fitted on ``cal``, in :data:`WEIGHT_STEPS` order: {step name: fitted value} for
    the steps with something to do. A step that ``reshapes`` the float model is in force while the later ones are
    measured; the Keras model is the trained one again on return."""
    fitted: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for step in WEIGHT_STEPS:
            if not step.enabled(options):
                continue
            value = step.fit(loaded, cal, options, dict(fitted))
            if value is not None:
                fitted[step.name] = value
                if step.reshapes:
                    stack.enter_context(step.apply(loaded, value, cal))
    return fitted


@contextlib.contextmanager
def weights_applied(loaded: LoadedModel, fitted: Mapping[str, Any], cal: CalibrationSet) -> Iterator[dict[str, Any]]:
    """The scoped weight swap: within the block ``loaded.keras_model`` carries the ``fitted`` weight steps (in
    order; none when ``fitted`` is empty); the trained weights are restored exactly on exit. Yields {step name:
    its recipe record}."""
    records: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for step in WEIGHT_STEPS:
            if step.name in fitted:
                records[step.name] = stack.enter_context(step.apply(loaded, fitted[step.name], cal))
        yield records


def compute_statistics(loaded: LoadedModel, info: ModelInfo, cal: CalibrationSet, options: QuantizeOptions, *,
                       quant_options: Mapping[str, Any], weights: Mapping[str, Any], trained: bytes | None,
                       reference: Any = None, budget: Any = None, progress: Callable[[str], None] = lambda t: None,
                       warn: Callable[[str], None] = lambda m: None) -> Statistics:
    """Calibrate the model as it is now (within :func:`weights_applied`) once and make the int8 TFLite (ReLU6
    fixed ranges, the preprocessing's input range, the other activations' ranges by ``options.activation_ranges``:
    :mod:`edgeship.quantize.techniques.ranges`), run the enabled :data:`FLATBUFFER_STEPS` on it, and measure each
    layer's SQNR (layers named inside nested models too: :class:`edgeship.quantize.layers.LayerNames`) against
    ``trained`` (the trained model's calibrated float flatbuffer; None: the calibrated one is the trained one)."""
    from edgeship.quantize.common import LAYER_SAMPLES, Statistics
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated
    from edgeship.quantize.layers import layer_sqnr

    if loaded.spec.qat:  # the trained FakeQuant ranges: no calibration, no range search, no flatbuffer step
        from edgeship.quantize.formats.tflite import QAT_RANGES, quantize_qat

        progress("int8 from the QAT ranges")
        qat = quantize_qat(loaded, io_dtype=quant_options["io_dtype"])
        return Statistics(qat, {}, None, {"activation_ranges": QAT_RANGES})
    calibrated = calibrate(loaded, cal.inputs)
    trained = trained or calibrated  # the yardstick: the trained model, not the corrected one
    quant = dict(quant_options)
    int8 = quantize_calibrated(calibrated, **quant)
    if quant["relu6_fixed"] and not int8.relu6_tensors:
        warn("the model has no ReLU6 outputs: the fixed-range mode has nothing to do, every activation was "
             "calibrated")
    method = options.activation_ranges or "minmax"
    if method != "minmax":  # search the ranges of the tensors left to calibration, then quantise with them
        from edgeship.quantize.techniques.ranges import choose_ranges

        progress(f"ranges: {method}")
        quant["activation_ranges"] = choose_ranges(calibrated, cal.inputs, method, skip=int8.fixed_tensors)
        int8 = quantize_calibrated(calibrated, **quant)
    ctx = FlatbufferContext(options, loaded, info, cal, calibrated, trained, quant, weights, budget, reference,
                            progress, warn)
    outputs: dict[str, Any] = {}
    for step in FLATBUFFER_STEPS:
        if step.enabled(options):
            int8, outputs[step.name] = step.run(ctx, int8)
    sqnr = layer_sqnr(trained, int8.model, cal.inputs, max_samples=LAYER_SAMPLES, keras_model=loaded.keras_model)
    records = {s.name: s.describe(outputs[s.name]) for s in sorted(FLATBUFFER_STEPS, key=lambda s: s.recipe_last)
               if s.name in outputs}  # (sorted is stable: the float fallback's record last, where it always was)
    return Statistics(int8, sqnr, outputs.get(fallback.STEP.name), records)
