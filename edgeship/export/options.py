"""The export stage's options: one typed, frozen object shared by the Python API (:func:`edgeship.export.export`),
the CLI's ``export`` arguments and the ``[export]`` table of ``edgeship.toml``.

Every choice is a ``str`` enum; a field's type, default and bounds are written once, here. Light on purpose: the
CLI reads it to build ``--help``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, Strict, ValidationError

from edgeship.errors import UserError
from edgeship.formats import FORMATS
from edgeship.schema import Table, describe
from edgeship.types import Format, Layout, Precision, _StrEnum

__all__ = ["CoreMLTarget", "ExportOptions", "FLOAT_PRECISION_CHOICES", "MAX_OPSET", "MIN_OPSET"]


class CoreMLTarget(_StrEnum):
    """A Core ML minimum deployment target (``coremltools.target``); read in any case ("ios16")."""

    IOS15 = "iOS15"
    IOS16 = "iOS16"
    IOS17 = "iOS17"
    IOS18 = "iOS18"

    @classmethod
    def _missing_(cls, value: object) -> CoreMLTarget | None:
        return next((m for m in cls if isinstance(value, str) and m.value.lower() == value.lower()), None)


MIN_OPSET = 13
MAX_OPSET = 18  # tf2onnx 1.17's highest
#: Every float precision some format exports ("fp32", "fp16"); int8 and the others come from the quantise stage.
FLOAT_PRECISION_CHOICES: tuple[Precision, ...] = tuple(dict.fromkeys(
    p for spec in FORMATS.values() for p in spec.float_precisions))


def _float_precision(p: Precision) -> Precision:
    if p not in FLOAT_PRECISION_CHOICES:
        raise ValueError(f"{p} is not a float precision ({', '.join(map(str, FLOAT_PRECISION_CHOICES))}): "
                         f"{p} comes from 'edgeship quantize'")
    return p


# Enum fields take their value as a TOML string ("nchw"), so they are not strict (the rest of the table is); a list
# is a list in TOML, a list or tuple in Python.
_Format = Annotated[Format, Strict(False)]
_FloatPrecision = Annotated[Precision, Strict(False), AfterValidator(_float_precision)]


class ExportOptions(Table):
    """What to export and how. ``precisions`` None: each format's default (TFLite and ONNX fp32, Core ML fp16)."""

    formats: Annotated[list[_Format], Strict(False)] = Field(default_factory=lambda: list(Format))
    precisions: Annotated[list[_FloatPrecision], Strict(False)] | None = None
    onnx_layout: Annotated[Layout, Strict(False)] = Layout.NHWC
    opset: Annotated[int, Field(ge=MIN_OPSET, le=MAX_OPSET)] = 17  # ONNX opset
    deployment_target: Annotated[CoreMLTarget, Strict(False)] = CoreMLTarget.IOS16  # Core ML

    @classmethod
    def of(cls, **values: Any) -> ExportOptions:
        """The options from Python values (enum members or their strings, in any case), or one UserError line.
        A value of None takes the field's default."""
        parsed = {k: _parse(k, v) for k, v in values.items() if v is not None}
        try:
            return cls.model_validate(parsed)
        except ValidationError as e:
            raise UserError(f"export option {describe(e, cls)}") from None

    def file_suffix(self, fmt: Format) -> str:
        """What an artifact's name adds for these options: "_nchw" for an NCHW ONNX."""
        return "_nchw" if fmt is Format.ONNX and self.onnx_layout is Layout.NCHW else ""


_ENUMS: dict[str, tuple[type[_StrEnum], str]] = {
    "formats": (Format, "format"), "precisions": (Precision, "precision"), "onnx_layout": (Layout, "ONNX layout"),
    "deployment_target": (CoreMLTarget, "Core ML deployment target"),
}


def _parse(key: str, value: Any) -> Any:
    """Strings to enum members with :meth:`_StrEnum.parse`'s message ("unknown format 'pdf': choose from ...")."""
    if key not in _ENUMS:
        return value
    enum, what = _ENUMS[key]

    def one(v: Any) -> Any:
        return enum.parse(v, what) if isinstance(v, str) else v

    return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)
