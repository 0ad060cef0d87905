"""The two kinds of PTQ step a technique declares (one ``STEP`` in its module under ``techniques/``); their order is
the one list of :mod:`edgeship.quantize.ptq`.

- A :class:`WeightStep` works on the float model's weights before conversion (equalisation, adaptive rounding,
  bias correction). ``fit`` measures it on the calibration set and returns what it found (None: nothing to do);
  ``apply`` is a scoped context: within it the Keras model carries the changed weights, on exit the trained weights
  are back, exactly. The stage applies the fitted steps only around the making of each file with int8 weights
  (:func:`edgeship.quantize.ptq.weights_applied`), never outside such a block.
- A :class:`FlatbufferStep` works on the quantised int8 flatbuffer (float fallback, int8 bias correction,
  raw-input compensation): ``run`` takes the int8 result and returns a new one with what it did (its output).

Each declares what it ``needs`` (:class:`Need`) and its ``name``, the key its record has in the recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping

from edgeship.types import _StrEnum

if TYPE_CHECKING:  # light at import: the techniques load TensorFlow when they run
    import numpy as np

    from edgeship.export.common import ModelInfo
    from edgeship.models.loading import LoadedModel
    from edgeship.quantize.calibration import CalibrationSet
    from edgeship.quantize.options import QuantizeOptions


class Need(_StrEnum):
    """What a step needs besides the calibration set; the stage prepares only what an enabled step needs."""

    CALIBRATION = "calibration"  # the calibration set (every step)
    FITTED = "fitted"  # the earlier weight steps' fitted values (``fitted`` of WeightStep.fit)
    TRAINED_FLOAT = "trained_float"  # the trained model's calibrated float flatbuffer: the yardstick
    REFERENCE = "reference"  # the trained Keras model's outputs on the calibration inputs


@dataclass(frozen=True)
class WeightStep:
    """A technique on the float model's weights. ``fit(loaded, cal, options, fitted)``: measured with the
    earlier steps that ``reshape`` the float model applied (``fitted``: their values by name); ``apply(loaded,
    value, cal)``: the scoped context that puts ``value`` in the weights and yields the recipe's record.
    ``reshapes``: the step gives an equivalent float model (equalisation) that later steps are measured on,
    rather than a correction of the int8 error measured against it."""

    name: str
    enabled: Callable[[QuantizeOptions], bool]
    fit: Callable[[LoadedModel, CalibrationSet, QuantizeOptions, Mapping[str, Any]], Any]
    apply: Callable[[LoadedModel, Any, CalibrationSet], ContextManager[dict[str, Any]]]
    needs: tuple[Need, ...] = (Need.CALIBRATION,)
    reshapes: bool = False


@dataclass(frozen=True)
class FlatbufferContext:
    """What a :class:`FlatbufferStep` may read. ``calibrated``: the calibrated float flatbuffer the int8 one was
    made from (the weight steps' weights); ``trained``: the yardstick, the trained model's (the same bytes when no
    weight step ran); ``quant_options``: what the int8 result was made with (``quantize_calibrated``'s keywords);
    ``weights``: the weight steps' records in force."""

    options: QuantizeOptions
    loaded: LoadedModel
    info: ModelInfo
    cal: CalibrationSet
    calibrated: bytes
    trained: bytes
    quant_options: Mapping[str, Any]
    weights: Mapping[str, Any]
    budget: Any = None  # the float fallback's SizeBudget
    reference: np.ndarray | None = None
    progress: Callable[[str], None] = lambda text: None
    warn: Callable[[str], None] = lambda msg: None


@dataclass(frozen=True)
class FlatbufferStep:
    """A technique on the int8 flatbuffer: ``run(ctx, int8) -> (int8, output)``, ``int8`` a
    ``TFLiteQuantResult``; ``describe(output)`` is the recipe's record (``recipe_last``: written after the other
    records, where the float fallback's always was)."""

    name: str
    enabled: Callable[[QuantizeOptions], bool]
    run: Callable[[FlatbufferContext, Any], tuple[Any, Any]]
    needs: tuple[Need, ...] = (Need.CALIBRATION, Need.TRAINED_FLOAT)
    describe: Callable[[Any], Any] = field(default=lambda output: output)
    recipe_last: bool = False
