"""Load a saved ``.mlpackage`` into coremltools' program representation and plan its execution with NumPy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgeship.errors import UserError
from edgeship.runtimes.mlprogram.fp16 import round_fp16
from edgeship.runtimes.mlprogram.kernels import KERNELS

# Ops whose result, from fp16 inputs, is always one of the input values (or an fp16 constant): no rounding to do.
EXACT_OPS = frozenset({"transpose", "reshape", "squeeze", "expand_dims", "concat", "pad", "relu", "relu6", "clip",
                       "max_pool", "reduce_max", "reduce_min", "maximum", "minimum", "identity", "cast", "abs",
                       "round", "floor", "ceil", "sign"})

_COLOR_SPACES = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}


class MLProgramError(UserError):
    """The package cannot be executed here: not found, not an ML Program, or unreadable."""


class UnsupportedOp(MLProgramError):
    """The program holds an op the reference executor has no kernel for: it refuses the model rather than
    answer without that op."""

    def __init__(self, op_type: str, op_name: str, path: Path | None = None, detail: str = "") -> None:
        self.op_type, self.op_name = op_type, op_name
        where = f"{path.name}: " if path is not None else ""
        super().__init__(f"{where}op '{op_type}' (named '{op_name}') is not implemented by edgeship's NumPy "
                         f"ML Program reference executor{': ' + detail if detail else ''}")


@dataclass(frozen=True)
class ImageInput:
    """An image input as the model description states it; the scale/bias live in the program as ops."""

    color_space: str  # RGB | BGR | GRAYSCALE | GRAYSCALE_FLOAT16
    height: int
    width: int


@dataclass(frozen=True)
class InputDesc:
    name: str
    shape: tuple[int | None, ...]  # the program's tensor shape (images: N, C, H, W); None where symbolic
    dtype: np.dtype
    image: ImageInput | None = None


@dataclass(frozen=True)
class OpRecord:
    """One computed op of the main function, in program order: what ``execute`` names its values by."""

    type: str
    name: str
    inputs: dict[str, list[str]]  # parameter -> the var names feeding it (constants included)
    outputs: list[str]


@dataclass
class _Step:
    record: OpRecord
    run: Callable[[dict[str, Any]], Any]
    consts: dict[str, Any]
    dynamic: dict[str, Any]  # parameter -> var name, or a list of ("var", name) / ("const", value)
    out_dtypes: list[Any]  # numpy dtype per output; None for non-tensor outputs
    round16: list[bool] = field(default_factory=list)  # per output: an fp16 result to round (not exact already)
    frees: list[str] = field(default_factory=list)  # var names whose last use is this step


def nptype(var: Any) -> Any:
    """The numpy dtype of a tensor/scalar var, None for str/dict/list vars."""
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    if dtype is None or dtype is types.str or types.is_dict(var.sym_type) or types.is_list(var.sym_type):
        return None
    try:
        return np.dtype(types.nptype_from_builtin(dtype))
    except (KeyError, TypeError):
        return None


def widen(value: Any) -> Any:
    """fp16 tensors are held and computed in float32 (an fp16 op's result is rounded to fp16 values)."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    if isinstance(value, np.float16):
        return np.float32(value)
    return value


def load_program(path: Path) -> tuple[Any, Any]:
    """(spec, pymil Program) of a saved .mlpackage: the spec and its weight blobs read from disk."""
    from edgeship._tf import import_quietly, silenced

    ct = import_quietly("coremltools")
    from coremltools.converters.mil.frontend.milproto.load import load

    if not path.exists():
        raise MLProgramError(f"Core ML model not found: {path}")
    try:
        with silenced():
            model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as e:
        raise MLProgramError(f"cannot read {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    spec = model.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise MLProgramError(f"{path.name} is a {kind} model: the reference executor runs ML Programs (.mlpackage)")
    try:
        with silenced():
            program = load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir or "")
    except Exception as e:
        raise MLProgramError(f"cannot load the program of {path.name}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return spec, program


def plan(function: Any, path: Path) -> tuple[dict[str, Any], list[_Step], list[Any]]:
    """(constant values by var name, the steps of the computed ops in order, classify ops) of a pymil function."""
    consts: dict[str, Any] = {}
    steps: list[_Step] = []
    for op in function.operations:
        if op.blocks:
            raise UnsupportedOp(op.op_type, op.name, path, "control flow (nested blocks)")
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            values = [o.val for o in op.outputs]
            if any(v is None for v in values):
                # const: the loader set the value. constexpr_* ops do not materialise on load: their
                # materialized_val_inference decompresses (coremltools' own implementation of the op)
                infer = getattr(op, "materialized_val_inference", None) or op.value_inference
                try:
                    inferred = infer()
                except NotImplementedError as e:
                    raise UnsupportedOp(op.op_type, op.name, path, str(e)) from None
                values = list(inferred) if isinstance(inferred, (tuple, list)) else [inferred]
            if any(v is None for v in values):
                raise UnsupportedOp(op.op_type, op.name, path, "its value could not be inferred")
            for o, v in zip(op.outputs, values):
                consts[o.name] = widen(np.asarray(v)) if isinstance(v, (np.ndarray, np.generic)) else v
            continue
        if op.op_type == "classify":
            steps.append(_classify_step(op))
            continue
        build = KERNELS.get(op.op_type)
        if build is None:
            raise UnsupportedOp(op.op_type, op.name, path)
        record = _record(op)
        static: dict[str, Any] = {}
        dynamic: dict[str, Any] = {}
        for param, var in op.inputs.items():
            if isinstance(var, (list, tuple)):
                dynamic[param] = [("const", consts[v.name]) if v.name in consts else ("var", v.name) for v in var]
            elif var.name in consts:
                static[param] = consts[var.name]
            else:
                dynamic[param] = var.name
        try:
            run = build(static)
        except Exception as e:
            raise UnsupportedOp(op.op_type, op.name, path, f"{type(e).__name__}: {e}") from None
        out_dtypes = [nptype(o) for o in op.outputs]
        in_floats = {nptype(v) for vs in op.inputs.values() for v in (vs if isinstance(vs, (list, tuple)) else [vs])}
        in_floats &= {np.dtype(np.float16), np.dtype(np.float32)}
        exact = op.op_type in EXACT_OPS and in_floats <= {np.dtype(np.float16)}
        round16 = [d == np.float16 and not exact for d in out_dtypes]
        steps.append(_Step(record, run, static, dynamic, out_dtypes, round16))
    return consts, steps, [s for s in steps if s.record.type == "classify"]


def _record(op: Any) -> OpRecord:
    inputs = {k: [x.name for x in v] if isinstance(v, (list, tuple)) else [v.name] for k, v in op.inputs.items()}
    return OpRecord(op.op_type, op.name, inputs, [o.name for o in op.outputs])


def _classify_step(op: Any) -> _Step:
    classes = list(op.classes.val)
    classes = [c.decode() if isinstance(c, bytes) else c for c in classes]

    def run(v: dict[str, Any]) -> tuple[Any, Any]:
        probs = np.asarray(v["probabilities"], dtype=np.float32)
        if probs.size % len(classes):
            raise ValueError(f"classify: {probs.size} values for {len(classes)} classes")
        rows = probs.reshape(-1, len(classes))
        labels = [classes[int(np.argmax(r))] for r in rows]
        dicts = [{c: float(p) for c, p in zip(classes, r)} for r in rows]
        # one image: a label and a dict, as Core ML answers; a batch (see MLProgram.execute_many): lists of them
        return (labels[0], dicts[0]) if len(rows) == 1 else (labels, dicts)

    step = _Step(_record(op), run, {"classes": classes}, {"probabilities": op.probabilities.name}, [None, None])
    return step


def describe_inputs(spec: Any, function: Any) -> list[InputDesc]:
    features = {f.name: f for f in spec.description.input}
    out = []
    for name, var in function.inputs.items():
        shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)
        image = None
        feature = features.get(name)
        if feature is not None and feature.type.WhichOneof("Type") == "imageType":
            t = feature.type.imageType
            image = ImageInput(_COLOR_SPACES.get(t.colorSpace, str(t.colorSpace)), int(t.height), int(t.width))
        out.append(InputDesc(name, shape, nptype(var), image))
    return out


def image_tensor(desc: InputDesc, pixels: np.ndarray) -> np.ndarray:
    """A client's pixels -> the program's image tensor. ``pixels``: (N, H, W, 3) RGB (any numeric dtype, uint8
    as a picture has), or (N, H, W) / (N, H, W, 1) for a grayscale input. Core ML hands the program the pixel
    values as floats, channels in the description's colour space (BGR reverses them), laid out like the
    program's input (N, C, H, W); the ImageType scale and bias are ops of the program itself."""
    assert desc.image is not None
    img = desc.image
    x = np.asarray(pixels)
    gray = img.color_space.startswith("GRAYSCALE")
    if gray and x.ndim == 3:
        x = x[..., None]
    want = (img.height, img.width, 1 if gray else 3)
    if x.ndim != 4 or x.shape[1:] != want:
        raise MLProgramError(f"image input '{desc.name}' takes (N, {want[0]}, {want[1]}, {want[2]}) pixels, "
                             f"got {tuple(x.shape)}")
    if img.color_space == "BGR":
        x = x[..., ::-1]
    x = x.astype(np.float32)
    shape = desc.shape
    if len(shape) == 4 and shape[1] == want[2] and shape[2:] == want[:2]:
        x = np.transpose(x, (0, 3, 1, 2))  # the program's image tensor is (N, C, H, W), as Core ML's always is
    elif not (len(shape) == 4 and shape[1:] == want):
        raise MLProgramError(f"image input '{desc.name}': the program's tensor {shape} does not match the "
                             f"description's {want[1]}x{want[0]} {img.color_space} image")
    return np.ascontiguousarray(x, dtype=np.float32)  # pixel values: exact in fp16 too


def check_tensor(desc: InputDesc, value: Any) -> np.ndarray:
    x = np.asarray(value)
    if x.ndim != len(desc.shape) or any(w is not None and g != w for g, w in zip(x.shape, desc.shape)):
        shape = tuple("?" if d is None else d for d in desc.shape)
        raise MLProgramError(f"input '{desc.name}' has shape {tuple(x.shape)}, the program expects {shape}")
    if desc.dtype == np.float16:  # held as float32 with fp16 values
        return x.astype(np.float16).astype(np.float32)
    return x.astype(desc.dtype, copy=False) if desc.dtype is not None else x


def resolve(step: _Step, env: Mapping[str, Any]) -> dict[str, Any]:
    v = dict(step.consts)
    for param, src in step.dynamic.items():
        v[param] = [val if kind == "const" else env[val] for kind, val in src] if isinstance(src, list) else env[src]
    return v


def finish(step: _Step, result: Any) -> list[Any]:
    """The kernel's result as the op's declared outputs. fp16 outputs stay float32 arrays, rounded to fp16
    values (overflow to inf, as fp16 does); other tensors are converted to their var's dtype."""
    values = list(result) if isinstance(result, tuple) else [result]
    if len(values) != len(step.out_dtypes):
        raise AssertionError(f"{step.record.type} '{step.record.name}': {len(values)} results for "
                             f"{len(step.out_dtypes)} outputs")
    out = []
    for value, dtype, rnd in zip(values, step.out_dtypes, step.round16 or [False] * len(values)):
        if dtype == np.float16:
            value = round_fp16(value) if rnd else np.asarray(value, dtype=np.float32)
        elif dtype is not None:
            value = np.asarray(value)
            if value.dtype != dtype:
                value = value.astype(dtype)
        out.append(value)
    return out


def declared(value: Any, dtype: Any) -> Any:
    """A held value in its declared dtype (fp16 vars are held as float32)."""
    if dtype == np.float16 and isinstance(value, np.ndarray):
        return value.astype(np.float16)
    return value
