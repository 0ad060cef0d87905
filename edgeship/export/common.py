"""What every exporter shares: the human fields each format carries, the export stage's table of the precisions
each format supports and its file suffix (read from :data:`edgeship.formats.FORMATS`), artifact naming, and turning
a converter's exception into one line that names the failing layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgeship import __version__
from edgeship.errors import ConversionError, UserError
from edgeship.formats import FORMATS
from edgeship.types import Format, Precision


@dataclass(frozen=True)
class ModelInfo:
    """The description/author/version/license fields that TFLite metadata, ONNX metadata_props and Core ML's
    model description each carry."""

    name: str
    description: str = ""
    version: str = "1.0"
    author: str = ""
    license: str = ""

    @classmethod
    def default_for(cls, spec_name: str, num_classes: int) -> "ModelInfo":
        return cls(
            name=spec_name,
            description=f"{spec_name}: image classifier with {num_classes} classes, exported by edgeship {__version__}",
        )


# Which float precisions each exporter makes, the one it makes when none is asked for, and its file's suffix: read
# from the format declarations (edgeship.formats).
FLOAT_PRECISIONS: dict[Format, tuple[Precision, ...]] = {f: spec.float_precisions for f, spec in FORMATS.items()}
DEFAULT_PRECISION: dict[Format, Precision] = {f: spec.default_precision for f, spec in FORMATS.items()}
EXTENSIONS: dict[Format, str] = {f: spec.suffix for f, spec in FORMATS.items()}

def plan(formats: list[Format], precisions: list[Precision] | None) -> list[tuple[Format, Precision]]:
    """The (format, precision) pairs to export. With no precisions, each format's default; otherwise every asked
    precision the format supports. A format left with nothing to make is a usage error."""
    jobs: list[tuple[Format, Precision]] = []
    for fmt in formats:
        if not precisions:
            jobs.append((fmt, DEFAULT_PRECISION[fmt]))
            continue
        chosen = [p for p in precisions if p in FLOAT_PRECISIONS[fmt]]
        if not chosen:
            supported = ", ".join(map(str, FLOAT_PRECISIONS[fmt]))
            raise UserError(
                f"{fmt} export makes {supported}, not {', '.join(map(str, precisions))}; "
                "int8 comes from 'edgeship quantize'"
            )
        jobs += [(fmt, p) for p in chosen]
    return jobs


def artifact_name(model_name: str, fmt: Format, precision: Precision, suffix: str = "") -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    return f"{safe}_{precision}{suffix}{EXTENSIONS[fmt]}"


def io_record(spec: Any) -> dict[str, str]:
    """The input and output names a float file's manifest record keeps (a :class:`~edgeship.models.spec.ModelSpec`)."""
    return {"input": spec.input_name, "output": spec.output_name, "input_dtype": "float32"}


# How each converter names the op type it cannot handle.
_OP_TYPE_PATTERNS = (
    r"'tf\.(\w+)' op",  # TFLite (MLIR)
    r"Custom ops: (\w+)",  # TFLite
    r"No Op registered for (\w+)",  # tf2onnx
    r"Unsupported ops?: \[?'?(\w+)",  # tf2onnx
    r"TF op '(\w+)'",  # coremltools
)


def conversion_error(model: Any, fmt: Format, exc: BaseException) -> ConversionError:
    """One line naming the layer the converter choked on.

    The converters name the failing op's *type* (TFLite also its graph path, the others not), so the model is
    traced once more and the ops of that type are mapped to the Keras layers whose name scopes hold them.
    """
    text = str(exc)
    op_types = {m for pat in _OP_TYPE_PATTERNS for m in re.findall(pat, text)}
    layers = _layers_holding(model, op_types) if op_types else []
    reason = _first_meaningful_line(text) or type(exc).__name__
    if op_types:
        reason = f"unsupported op {', '.join(sorted(op_types))}" + ("" if len(reason) > 200 else f" ({reason})")
    where = f"layer {', '.join(layers[:3])}" if layers else "the model"
    return ConversionError(f"{fmt} converter cannot handle {where}: {reason}")


def _layers_holding(model: Any, op_types: set[str]) -> list[str]:
    """Layers (as "'name' (Class)") whose traced TF ops include one of ``op_types``."""
    try:
        from edgeship._tf import tf

        t = tf()
        shape = (1, *model.input_shape[1:])
        graph = t.function(lambda x: model(x, training=False)).get_concrete_function(
            t.TensorSpec(shape, t.float32)).graph
    except Exception:  # tracing is best effort: the message still names the op type
        return []
    from edgeship.models.loading import walk_layers

    by_name = {layer.name: layer for layer in walk_layers(model)}
    found: list[str] = []
    for op in graph.get_operations():
        if op.type not in op_types:
            continue
        for part in reversed(op.name.split("/")[:-1]):
            layer = by_name.get(part) or by_name.get(re.sub(r"_\d+$", "", part))
            if layer is not None:
                label = f"'{layer.name}' ({type(layer).__name__})"
                if label not in found:
                    found.append(label)
                break
    return found


def _first_meaningful_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "<unknown>", "note:")):
            line = re.sub(r"^(error:|loc\([^)]*\):)\s*", "", line)
            return line[:300]
    return ""
