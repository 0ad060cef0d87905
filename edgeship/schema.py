"""Schemas for what users write (``edgeship.toml``, policy files, ``manifest.json``), checked with pydantic v2.

Every table is a :class:`Table`: strict types (``trust = "false"``, a string, is refused rather than read as
true; ``"4"`` is not a number; ``1.0`` is not an integer), unknown keys refused, NaN/inf refused. Values with a
meaning carry it in their type: :data:`Fraction` is a share in [0, 1] (a value like 99 gets the hint "write 0.99"),
:data:`NonNegative`, :data:`Positive`. :func:`check` turns a ``ValidationError`` into one :class:`UserError` line
naming the file, the table and the key.

To add a key to a table, add a field to its class (with its type and default); nothing else needs to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edgeship.errors import UserError


class Table(BaseModel):
    """A table of a user's file: strict types, no unknown keys, no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _fraction(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        hint = f"; {v:g} looks like a percent: write {v / 100:g}" if 1 < v <= 100 else ""
        raise ValueError(f"must be a fraction in [0, 1] (0.99 is 99 %), got {v:g}{hint}")
    return v


#: A share in [0, 1]: agreement, accuracy, overlap, an accuracy drop (0.01 is 1 point)
Fraction = Annotated[float, AfterValidator(_fraction)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]

T = TypeVar("T", bound=BaseModel)


def check(model: type[T], data: Any, path: str | Path, where: str = "") -> T:
    """``data`` validated as ``model``, or one :class:`UserError` line: ``FILE: [table] key: what is wrong``.
    Unknown keys are listed together with the known ones."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{path}: {describe(e, model, where)}") from None


def describe(e: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """The first problem of ``e`` in one line (all unknown keys of a table together)."""
    errors = e.errors(include_url=False)
    extra = [err for err in errors if err["type"] == "extra_forbidden"]
    if extra:
        loc = extra[0]["loc"]
        table = _table(where, loc[:-1])
        unknown = sorted(str(err["loc"][-1]) for err in extra if err["loc"][:-1] == loc[:-1])
        known = sorted(_fields_at(model, loc[:-1]))
        return f"{table + ' has ' if table else ''}unknown keys {unknown}; known: {known}"
    err = errors[0]
    keys = _keys(err["loc"])
    idx = next((p for p in err["loc"] if isinstance(p, int)), None)
    table, key = _table(where, keys[:-1]), (keys[-1] if keys else "")
    got = err.get("input")
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return f"{_table(where, keys)} must be a table of key = value, got {got!r}"
    # a union (keep_float = "auto" or a count): every alternative's message, joined
    msgs = list(dict.fromkeys(x["msg"].removeprefix("Value error, ") for x in errors if _keys(x["loc"]) == keys))
    msg = " or ".join(m[:1].lower() + m[1:] for m in msgs)
    shown = "" if err["type"] in ("value_error", "missing") or isinstance(got, dict) else f", got {got!r}"
    item = f" (item {idx})" if idx is not None else ""
    return f"{table + ' ' if table else ''}{key}{item}: {msg}{shown}"


def _keys(loc: tuple) -> tuple[str, ...]:
    """A key's own location: without list indices and the union-member tags pydantic adds."""
    return tuple(p for p in loc if isinstance(p, str) and not _is_type_tag(p))


def _table(where: str, keys: tuple) -> str:
    parts = [p for p in (where, *map(str, keys)) if p]
    return f"[{'.'.join(parts)}]" if parts else ""


def _is_type_tag(p: str) -> bool:
    return p in ("int", "float", "str", "bool", "list", "dict", "none") or p.startswith(("literal[", "function-",
                                                                                        "constrained-"))


def _fields_at(model: type[BaseModel], keys: tuple) -> set[str]:
    """The field names of the (nested) table at ``keys``."""
    for k in keys:
        field = model.model_fields.get(str(k))
        sub = _model_of(field.annotation) if field is not None else None
        if sub is None:
            return set()
        model = sub
    return set(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        m = _model_of(a)
        if m is not None:
            return m
    return None
