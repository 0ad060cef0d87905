"""The model spec: everything the exporters and validators need to know about a model, as data.

One :class:`Preprocessing` object describes how a client turns an image into the model's input. The TFLite
metadata, the ONNX ``metadata_props``, the Core ML ``ImageType`` and the validators' feeds are all derived from
it, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import os
from typing import Any

import numpy as np

from edgeship.errors import UserError
from edgeship.types import ColorOrder, Layout, OutputKind


@dataclass(frozen=True)
class Preprocessing:
    """``input = (pixel - mean) / std`` per channel, pixels in 0-255 in the model's channel order.

    ``mean`` and ``std`` are in 0-255 pixel units and in the model's channel order (``color``). ``layout`` is the
    layout of the model's own input tensor (Keras models are NHWC).
    """

    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    color: ColorOrder = ColorOrder.RGB
    layout: Layout = Layout.NHWC

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError("preprocessing needs three mean and three std values (one per colour channel)")
        if any(s <= 0 for s in self.std):
            raise UserError(f"preprocessing std must be positive, got {list(self.std)}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "color", ColorOrder(self.color))
        object.__setattr__(self, "layout", Layout(self.layout))

    @classmethod
    def identity(cls) -> "Preprocessing":
        """Raw 0-255 pixels: for models that rescale inside (MobileNetV3's ``include_preprocessing``)."""
        return cls(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of the normalised input, over all channels, for pixels in [0, 255]."""
        lows = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
        highs = [(255.0 - m) / s for m, s in zip(self.mean, self.std)]
        return (min(lows), max(highs))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise a batch of RGB images (N, H, W, 3), 0-255, into the model's float input."""
        x: np.ndarray = np.asarray(rgb, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"expected RGB images of shape (N, H, W, 3), got {x.shape}")
        if self.color is ColorOrder.BGR:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout is Layout.NCHW:
            x = np.transpose(x, (0, 3, 1, 2))
        return np.ascontiguousarray(x, dtype=np.float32)

    def scale_bias(self) -> tuple[float, tuple[float, float, float]] | None:
        """Core ML's ``ImageType`` form ``y = scale * x + bias``; None when the stds differ per channel."""
        if max(self.std) - min(self.std) > 1e-9 * max(self.std):
            return None
        scale = 1.0 / self.std[0]
        return scale, tuple(-m / s for m, s in zip(self.mean, self.std))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "color": str(self.color), "layout": str(self.layout)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), color=ColorOrder(d.get("color", "rgb")),
                       layout=Layout(d.get("layout", "nhwc")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"invalid preprocessing {d!r}: needs mean, std (3 values each), color, layout") from e


@dataclass(frozen=True)
class ModelSpec:
    """What edgeship knows about one model, derived from it and overridable with :meth:`replace`."""

    name: str
    input_shape: tuple[int, int, int]  # (H, W, C), the Keras model's own NHWC input
    num_classes: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, ...] = field(default=(), repr=False)
    family: str = "custom"
    alpha: float | None = None
    input_name: str = "image"
    # The output tensor's name in every file; None: the output kind's (OutputKind.tensor_name: "probabilities",
    # "logits", "scores", "embedding")
    output_name: str | None = None
    # True when the model's last layer is a softmax: the outputs are probabilities, not logits.
    outputs_probabilities: bool = False
    # What the output means (OutputKind); None: probabilities if outputs_probabilities, else logits. When given,
    # it wins and outputs_probabilities follows it.
    output_kind: OutputKind | None = None
    # What the model's own graph does to its input before the first conv (edgeship.models.innorm), as found at
    # load; None when it does nothing there. A model that normalises inside takes raw 0-255 pixels.
    in_graph_normalisation: str | None = None
    # --bake-preprocessing: the declared preprocessing, now the first ops of the exported model
    # (edgeship.models.bake); ``preprocessing`` is then the identity. None when nothing was baked.
    baked_preprocessing: Preprocessing | None = None
    # The output's shape without the batch dimension when it is not one vector ((H, W, classes) for a segmentation
    # map, (A, 4) for boxes...); () for a (num_classes,) vector. num_classes is its last dimension.
    output_shape: tuple[int, ...] = ()
    # Quantisation-aware trained: what the model's graph holds of TensorFlow's FakeQuant ops, found at load
    # ("118 FakeQuant ops: ...", edgeship.models.qat); None for a model without them. Its float files are judged by
    # the policy's [qat.PRECISION] tables, its int8 files take the trained ranges.
    qat: str | None = None

    def __post_init__(self) -> None:
        labels = tuple(self.labels) or tuple(str(i) for i in range(self.num_classes))
        if len(labels) != self.num_classes:
            raise UserError(
                f"{len(labels)} labels given for a model with {self.num_classes} classes: "
                "give one label per class, one per line, in class-index order"
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        kind = OutputKind(self.output_kind) if self.output_kind is not None else OutputKind.LOGITS
        if kind is OutputKind.LOGITS and self.outputs_probabilities:
            kind = OutputKind.PROBABILITIES  # replace(outputs_probabilities=True) on a logits spec
        if self.output_name == OutputKind.LOGITS.tensor_name and kind is not OutputKind.LOGITS \
                and self.output_kind is OutputKind.LOGITS:
            object.__setattr__(self, "output_name", kind.tensor_name)  # the default name followed the kind
        object.__setattr__(self, "output_kind", kind)
        object.__setattr__(self, "output_shape", tuple(int(d) for d in self.output_shape))
        if kind.per_image and len(self.output_shape) > 1:
            raise UserError(
                f"{self.name}: a {kind} output is one score per class, and this model's output has shape "
                f"{self.output_shape}: give --output-kind segmentation (a per-pixel class map (H, W, classes)) "
                "or regression (values judged one by one)")
        if kind is OutputKind.SEGMENTATION and len(self.output_shape) != 3:
            raise UserError(
                f"{self.name}: a segmentation output is a per-pixel class map (H, W, classes), and this model's "
                f"output has shape {self.output_shape or (self.num_classes,)}: give --output-kind regression")
        object.__setattr__(self, "outputs_probabilities", kind is OutputKind.PROBABILITIES)
        if self.output_name is None:
            object.__setattr__(self, "output_name", kind.tensor_name)

    @property
    def output_tensor(self) -> str:
        """The output's name in every exported file: ``output_name``, which ``__post_init__`` sets from the output
        kind when it was not given."""
        return self.output_name or OutputKind(self.output_kind).tensor_name

    def with_output_kind(self, kind: "OutputKind | str") -> "ModelSpec":
        """This spec with another output kind (its output name follows unless it was set to something else)."""
        parsed: OutputKind = OutputKind.parse(str(kind), "output kind")
        name = parsed.tensor_name if self.output_name == OutputKind(self.output_kind).tensor_name else self.output_name
        return dataclasses.replace(self, output_kind=parsed, output_name=name,
                                   outputs_probabilities=parsed is OutputKind.PROBABILITIES)

    @property
    def mask_size(self) -> tuple[int, int] | None:
        """(h, w) of a segmentation's class map, at which its ground-truth masks are read; None for other kinds."""
        if OutputKind(self.output_kind) is not OutputKind.SEGMENTATION:
            return None
        return int(self.output_shape[0]), int(self.output_shape[1])

    @property
    def resolution(self) -> int:
        return int(self.input_shape[0])

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The model's description (preprocessing and labels are recorded beside it, at the manifest's top)."""
        d: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "alpha": self.alpha,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "outputs_probabilities": self.outputs_probabilities,
            "output_kind": str(self.output_kind),
        }
        if self.in_graph_normalisation:
            d["in_graph_normalisation"] = self.in_graph_normalisation
        if self.baked_preprocessing is not None:
            d["baked_preprocessing"] = self.baked_preprocessing.to_dict()
        if self.output_shape:
            d["output_shape"] = list(self.output_shape)
        if self.qat:
            d["qat"] = self.qat
        return d


def read_labels(path: "str | os.PathLike[str]") -> tuple[str, ...]:
    """One label per line, in class-index order, read as people save them: UTF-8 with or without a byte-order mark
    (Notepad's "UTF-8 with BOM"), LF or CRLF line ends. Lines are split on ``\\n`` and ``\\r\\n`` only — as
    MediaPipe's and TFLite Support's label readers split ``labels.txt`` — not with ``str.splitlines``, which also
    splits on U+2028, U+2029, U+0085, form feeds and other separators, and so would turn one label into two.
    Spaces and tabs around a label are dropped; blank trailing lines are ignored. A label holding a control
    character (Unicode category Cc: a lone ``\\r``, a form feed, NUL...) is refused naming its line, since every
    format would ship it invisibly. The labels shipped in each format are this list, byte for byte. A ``.json`` file
    is a JSON list of names instead; a directory is a training folder of class folders
    (:func:`class_folder_labels`). A Python pickle (a scikit-learn ``LabelEncoder``) is refused with the one-line
    command that turns it into a labels.txt: unpickling runs code, and edgeship never does it.

    Raises :class:`UserError` (file missing or not a regular file, not UTF-8, empty, a control character, a
    pickle)."""
    import unicodedata
    from pathlib import Path

    from edgeship.fileio import read_regular_bytes

    p = Path(path)
    if p.is_dir():
        return class_folder_labels(p)
    try:
        data = read_regular_bytes(p, "label file", max_bytes=64 * 1024 * 1024)
    except OSError as e:
        raise UserError(f"cannot read label file {p}: {e.strerror or e}") from None
    if data[:1] == b"\x80" and data[-1:] == b".":  # a pickle (protocol 2+): e.g. a scikit-learn LabelEncoder
        raise UserError(
            f"label file {p} is a Python pickle, which edgeship never loads (unpickling runs code): write the "
            f"class names one per line with scikit-learn's joblib (it reads joblib and plain pickles), e.g. "
            f"python -c \"import joblib, pathlib; pathlib.Path('labels.txt').write_text('\\n'.join(map(str, "
            f"joblib.load('{p.name}').classes_)) + '\\n')\"")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"label file {p} is not UTF-8 (line {line}): save it as UTF-8") from None
    if p.suffix.lower() == ".json":
        return _json_labels(p, text)
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip(" \t"):
        lines.pop()
    if not lines:
        raise UserError(f"label file {p} is empty: write one label per line")
    labels = tuple(line.strip(" \t") for line in lines)
    for number, label in enumerate(labels, 1):
        bad = next((ch for ch in label if unicodedata.category(ch) == "Cc"), None)
        if bad is not None:
            what = {"\r": "a carriage return not followed by a line feed", "\x0c": "a form feed", "\t": "a tab",
                    "\x00": "a NUL"}.get(bad, "a control character")
            raise UserError(f"label file {p}, line {number}: the label holds {what} (U+{ord(bad):04X}); remove it")
    return labels


def class_folder_labels(root: "str | os.PathLike[str]") -> tuple[str, ...]:
    """The class names of a folder of class folders (``root/<class>/<image>``, the training set's layout), in the
    order Keras gives them class indices: ``keras.utils.image_dataset_from_directory`` (``labels="inferred"``) sorts
    the subfolder names (Python's ``sorted``, by code point) and skips names starting with "." (keras/src/utils/
    dataset_utils.py, ``index_directory``). So a model trained from that folder has these labels, index by index.

    Raises :class:`UserError` when ``root`` holds no class folder, or holds images beside them (then it is not the
    training layout, and the order would be a guess)."""
    from pathlib import Path

    from edgeship.data import IMAGE_SUFFIXES

    p = Path(root)
    names = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise UserError(f"label folder {p} holds no class folders: give a text file, one label per line, or the "
                        "training folder of class folders (<class>/<image>)")
    loose = sorted(f.name for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise UserError(f"label folder {p} holds images beside its class folders ({loose[0]}): give the training "
                        "folder whose subfolders are the classes, or a labels.txt")
    return tuple(names)


def _json_labels(p: Any, text: str) -> tuple[str, ...]:
    """A ``.json`` label file: a list of class names (strings), in class-index order."""
    import json

    try:
        names = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"label file {p} is not valid JSON ({str(e)[:80]}): write a JSON list of class names") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"label file {p} must hold a non-empty JSON list of class names (strings), in class order")
    return tuple(names)


def parse_triplet(text: str, what: str) -> tuple[float, float, float]:
    """'127.5' or '123.7,116.3,103.5' -> three floats (one value means the same for every channel)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{what} must be one number or three comma-separated numbers, got '{text}'") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not all(np.isfinite(vals)):
        raise UserError(f"{what} must be one number or three comma-separated numbers, got '{text}'")
    return (vals[0], vals[1], vals[2])




#: The plausible declared normalisation of an image model whose clients feed 0-255 pixels (issue 23): every
#: convention in use lies inside — raw pixels (mean 0, std 1), x / 255 (std 255), (x - 127.5) / 127.5, ImageNet
#: mean/std in pixel units (std about 58), Caffe-style mean subtraction (std 1). A std below 1 stretches the 255
#: pixel steps over more than 255 units (0-1-unit ImageNet std 0.229 gives values up to 1,111), above 510 it
#: squeezes them into less than half a unit; a mean outside the pixel range puts every pixel on one side of it.
STD_BOUNDS = (1.0, 510.0)
MEAN_BOUNDS = (0.0, 255.0)


def check_declared_units(mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
                         what: str = "--mean/--std") -> None:
    """Refuse (one :class:`UserError` line naming the likely fix) a declared mean/std, in 0-255 pixel units, whose
    normalised range no image model uses (:data:`STD_BOUNDS`, :data:`MEAN_BOUNDS`). None means "not declared".
    Called before any model is loaded; ``--force-preprocessing`` skips it."""
    m = tuple(mean) if mean is not None else None
    s = tuple(std) if std is not None else None
    values = [v for v in (m or ()) + (s or ())]
    if any(not np.isfinite(v) for v in values):
        raise UserError(f"{what} must be finite numbers, got mean {m}, std {s}")
    if s is not None and any(v <= 0 for v in s):
        raise UserError(f"{what}: std must be positive, got {list(s)}")
    unit01 = (m is None or all(0 <= v <= 1 for v in m)) and (s is None or all(0 < v < 1 for v in s))
    if s is not None and unit01 and any(v < STD_BOUNDS[0] for v in s):
        mean255 = ",".join(f"{v * 255:g}" for v in m) if m is not None else None
        std255 = ",".join(f"{v * 255:g}" for v in s)
        lo_m = m if m is not None else (127.5,) * 3
        top = max((255 - a) / b for a, b in zip(lo_m, s))
        fix = (f"--mean {mean255} --std {std255}" if mean255 else f"--std {std255}")
        raise UserError(
            f"{what} look like 0-1 units ({'' if m is None else f'mean {_fmt(m)}, '}std {_fmt(s)}), but edgeship's are in 0-255 pixel units: "
            f"the files would feed the model values up to {top:,.0f}. Declare {fix} (each times 255), or pass "
            f"--force-preprocessing ([model] force_preprocessing = true) if the model really takes that")
    if s is not None and not all(STD_BOUNDS[0] <= v <= STD_BOUNDS[1] for v in s):
        raise UserError(
            f"{what}: std {_fmt(s)} (0-255 pixel units) is outside {STD_BOUNDS[0]:g}-{STD_BOUNDS[1]:g}, where every "
            f"image-model convention lies (1 raw pixels, 58 ImageNet, 127.5 for [-1, 1], 255 for [0, 1]): check the "
            f"units, or pass --force-preprocessing ([model] force_preprocessing = true)")
    if m is not None and not all(MEAN_BOUNDS[0] <= v <= MEAN_BOUNDS[1] for v in m):
        raise UserError(
            f"{what}: mean {_fmt(m)} is outside the 0-255 pixel range (0 for [0, 1] or raw pixels, 127.5 for "
            f"[-1, 1], about 124,116,104 for ImageNet): check the units, or pass --force-preprocessing "
            f"([model] force_preprocessing = true)")


def _fmt(values: tuple[float, ...] | None) -> str:
    return "-" if values is None else ",".join(f"{v:g}" for v in values)
