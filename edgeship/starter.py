"""``edgeship init``: a commented starter ``edgeship.toml`` for one model.

The starter holds every table and key :func:`edgeship.pipeline.load_config` accepts (``[model]``, ``[export]``,
``[quantize]``, ``[validate]``, ``[output]``). What loading the model settles (its output kind, its preprocessing
when the demo or a variant's convention defines it, labels found beside it, the formats a QAT model can take) is
written as a value; every other key is a commented-out line with its default or an example and one line of
explanation, so uncommenting it is all it takes. The file loads with ``edgeship run`` as written.

The model is loaded in safe mode only (:func:`edgeship.models.loading.load_model` with ``trust_model=False``):
nothing from the model file runs; a model that would need ``--trust-model`` is refused in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeship.errors import UserError

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

__all__ = ["Key", "KEYS", "TABLES", "render_starter", "write_starter"]

#: The tables of an edgeship.toml, in the order the starter writes them (edgeship.pipeline.ConfigFile's fields)
TABLES = ("model", "export", "quantize", "validate", "output")


@dataclass(frozen=True)
class Key:
    """One key of the starter: its example (a Python value written as TOML) and its one-line explanation."""

    example: Any
    why: str


#: Every key of every table, with an example value (the default where it has one) and what it does. A key added to a
#: table's class (edgeship.pipeline.ModelTable, ExportOptions, QuantizeTable, ValidateOptions, OutputTable) must be
#: added here: tests/test_starter.py checks both lists are the same.
KEYS: dict[str, dict[str, Key]] = {
    "model": {
        "path": Key("models/classifier.keras", "a .keras, .h5 or SavedModel directory (relative to this file), or a "
                                               "variant name; default: the embedded demo"),
        "labels": Key("labels.txt", "class names: a text file (one per line), a JSON list (.json) or the training "
                                    "folder of class folders; default: labels.txt beside the model"),
        "trust": Key(False, "a TOML boolean: true runs code from the model file (Lambda layers, custom classes)"),
        "output_kind": Key("probabilities", "probabilities, logits, multilabel, embedding, segmentation or "
                                            "regression; default: detected"),
        "mean": Key([127.5, 127.5, 127.5], "per-channel mean in 0-255 pixel units (one number or three)"),
        "std": Key([127.5, 127.5, 127.5], "per-channel std in 0-255 pixel units: input = (pixel - mean) / std"),
        "bgr": Key(False, "the model expects BGR channel order"),
        "bake_preprocessing": Key(False, "make mean/std/BGR the model's first op: every file takes raw RGB pixels "
                                         "(for MediaPipe)"),
        "force_preprocessing": Key(False, "accept a mean/std outside every convention (refused otherwise)"),
        "input_size": Key("224x224", "fixes a dynamic input size (None, None, None, 3); or [224, 224]"),
        "resize": Key("stretch", "how images of another size are fitted: stretch, or center-crop as iOS Vision "
                                 "does; the validated figures assume it"),
    },
    "export": {
        "formats": Key(["tflite", "onnx", "coreml"], "the float files to make"),
        "precisions": Key(["fp32", "fp16"], "default: each format's own (TFLite and ONNX fp32, Core ML fp16)"),
        "onnx_layout": Key("nhwc", "or nchw: the ONNX input's layout"),
        "opset": Key(17, "ONNX opset, 13 to 18"),
        "deployment_target": Key("iOS16", "Core ML minimum deployment target: iOS15 to iOS18"),
    },
    "quantize": {
        "formats": Key(["tflite", "onnx", "coreml"], "default: the exported formats; [] skips quantising"),
        "calibration": Key("data/calibration", "a folder of images (any layout, folder names never read) or an "
                                               ".npy/.npz; required but for the demo model"),
        "num_samples": Key(200, "calibration images used, picked with seed"),
        "seed": Key(0, "which calibration images are picked"),
        "relu6_fixed": Key(True, "ReLU6 outputs get the fixed range [0, 6] (false: calibrated like the rest)"),
        "io_dtype": Key("uint8", "the int8 TFLite's and ONNX's input/output type: uint8 (MediaPipe), int8 or "
                                 "float32"),
        "precisions": Key(["int8", "w8", "w8a8"], "default: int8 TFLite and ONNX, Core ML w8 and w8a8; also "
                                                  "TFLite w8 and fp16"),
        "onnx_method": Key("tflite", "tflite: the int8 TFLite rewritten (same answers); minmax, entropy, "
                                     "percentile: ONNX Runtime's quantize_static"),
        "bias_correction": Key(True, "correct the mean output shift int8 weights cause"),
        "ptq": Key("thorough", "or fast (the converters' ranges and rounding, quicker): sets "
                               "weight_rounding, activation_ranges, int8_bias_correction unless given"),
        "weight_rounding": Key("adaptive", "nearest or adaptive (AdaRound; thorough's)"),
        "cross_layer_equalization": Key(False, "equalise depthwise -> pointwise pairs first (did not win where "
                                               "measured)"),
        "activation_ranges": Key("mse", "minmax, mse (thorough's) or percentile"),
        "int8_bias_correction": Key(True, "correct the int8 TFLite's biases op by op (thorough's)"),
        "raw_input_compensation": Key(False, "take the uint8 input's half step out of the first layer's bias"),
        "keep_float": Key("auto", "the float fallback: \"auto\" or a number of ops kept in float; default: none"),
        "max_drop": Key(0.01, "with keep_float = \"auto\": the top-1 disagreement allowed on the calibration set"),
        "max_size": Key("1.3x", "the fallback's budget for the int8 TFLite: bytes, \"5MB\" or a ratio"),
        "input_range": Key([0, 65535], "an .npy/.npz not in 0-255 pixels: the values meaning 0 and 255"),
    },
    "validate": {
        "data": Key("data/heldout", "held-out images: class folders DATA/<class>/<image> (labelled) or one folder, "
                                    "or .npy/.npz; required but for the demo model"),
        "policy": Key("release-policy.toml", "gates merged over the shipped ones (edgeship/validate/policy.toml)"),
        "require": Key(["tflite", "onnx"], "formats whose runtime must run here (a skip then fails the release)"),
        "threads": Key(1, "threads per runtime"),
        "iterations": Key(50, "timed inferences per file"),
        "warmup": Key(5, "untimed inferences before them"),
        "batch_size": Key(32, "images per batch through each runtime"),
        "kernel_path_samples": Key(500, "int8 files also run through a second kernel path on this many samples "
                                        "(0: off)"),
        "allow_modified": Key(False, "validate files that differ from their manifest record (the report says so)"),
        "baseline": Key("last-release/report.json", "a previous report.json (or its folder): no falling behind it"),
        "latency_from": Key(["pixel7.log"], "LiteRT benchmark_model logs from a real device"),
        "device": Key("Pixel 7", "the device those logs come from"),
        "input_range": Key([0, 1], "an .npy/.npz not in 0-255 pixels: the values meaning 0 and 255"),
        "executor": Key("local", "or ray: shards over a Ray cluster (pip install 'edgeship[ray]')"),
        "address": Key("head-node:6379", "with executor = \"ray\": the cluster; default: a local Ray"),
        "workers": Key(4, "with executor = \"ray\": shard tasks in flight; default: CPUs / threads"),
        "skip_bad_images": Key(True, "an unreadable image fails alone (default: ray yes, local stops the run)"),
        "expect_accuracy": Key(0.9, "the float model's top-1 accuracy expected on labelled data (a contract check)"),
        "contain": Key(True, "each file's runtime in a process of its own (false: in this one, to debug)"),
    },
    "output": {
        "dir": Key("edgeship-out", "where the files and report/ go (relative to this file)"),
    },
}


def toml_value(value: Any) -> str:
    """``value`` (a str, bool, int, float or a list of them) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _line(key: str, value: Any, why: str, commented: bool) -> str:
    text = f"{'# ' if commented else ''}{key} = {toml_value(value)}"
    return f"{text:<44} # {why}"


def _settled(loaded: LoadedModel, model: str | None, out_dir: Path) -> tuple[dict[str, dict[str, Any]],
                                                                           dict[str, dict[str, str]], list[str]]:
    """What loading the model settled: per table, the keys written as values; per table, a better explanation for
    some keys; and the header's lines about the model."""
    from edgeship.models.innorm import formula
    from edgeship.models.loading import beside_labels
    from edgeship.types import ColorOrder, OutputKind

    spec = loaded.spec
    values: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    notes: dict[str, dict[str, str]] = {t: {} for t in TABLES}
    demo = model is None
    registry = loaded.source_path.startswith("registry:")
    if not demo:
        values["model"]["path"] = model if registry else _relative(Path(model or ""), out_dir)
        beside = beside_labels(model)
        if beside is not None and beside.is_file():
            values["model"]["labels"] = _relative(beside, out_dir)
    values["model"]["trust"] = False
    kind = OutputKind(spec.output_kind)
    values["model"]["output_kind"] = kind.value
    notes["model"]["output_kind"] = f"detected from the model; or {', '.join(k.value for k in OutputKind if k is not kind)}"
    pre = spec.preprocessing
    source = loaded.preprocessing_source
    if loaded.in_graph is not None:
        for key in ("mean", "std", "bgr"):
            notes["model"][key] = "do not declare: the model normalises its own input (found in its graph)"
    elif demo or registry:  # a convention the demo's training or keras.applications defines: declared as such
        values["model"]["mean"] = [float(v) for v in pre.mean]
        values["model"]["std"] = [float(v) for v in pre.std]
        values["model"]["bgr"] = pre.color is ColorOrder.BGR
        notes["model"]["mean"] = f"0-255 pixel units; {source}"
    else:
        notes["model"]["mean"] = ("nothing found in the graph: edgeship run infers it from your images; declare it "
                                  "if you know it (0-255 units)")
    values["model"]["bake_preprocessing"] = False
    h, w = spec.input_shape[:2]
    notes["model"]["input_size"] = f"only for a dynamic input size (None, None, None, 3); this model's is {h}x{w}"
    formats = ["tflite", "coreml"] if spec.qat else ["tflite", "onnx", "coreml"]
    values["export"].update(formats=formats, onnx_layout="nhwc", opset=17, deployment_target="iOS16")
    if spec.qat:
        notes["export"]["formats"] = "a quantisation-aware trained model: its ONNX fp32 is refused, so no onnx"
    values["quantize"].update(num_samples=200, ptq="thorough")
    values["output"]["dir"] = "edgeship-out"
    if not (demo or registry):  # required for one's own model: written as values to fill (the demo's digits fit only it)
        values["quantize"]["calibration"] = KEYS["quantize"]["calibration"].example
        notes["quantize"]["calibration"] = ("required: about 200 of your images, any folder layout (names never "
                                            "read), or an .npy/.npz")
        values["validate"]["data"] = KEYS["validate"]["data"].example
        notes["validate"]["data"] = ("required: held-out images, not the calibration ones: DATA/<class>/<image> "
                                     "(labelled) or one folder, or .npy/.npz")
    if loaded.in_graph is None and not (demo or registry) and source.startswith("assumed"):
        said = ("not found in the graph nor declared: edgeship run infers it from your images and stops if no "
                "convention wins; declare [model] mean/std if you know them")
    else:
        said = f"{formula(pre)} on {pre.color.value.upper()} pixels 0-255, {source}"
    classes = (f"{spec.num_classes} classes, labels: {loaded.labels_source}" if kind.has_classes
               else f"{spec.num_classes} output values")
    header = [
        f"model: {spec.name} ({'the embedded demo' if demo else loaded.source_path}), input {h}x{w}, "
        f"output {kind.value}, {classes}",
        f"preprocessing: {said}",
    ]
    if spec.qat:
        header.append(f"quantisation-aware trained: {spec.qat}")
    return values, notes, header


def _relative(path: Path, out_dir: Path) -> str:
    """``path`` as the config file will read it: relative to the file's folder (load_config resolves it there) when
    it lies beside, below or one folder above it, so the project moves as a whole; else absolute (a model in a cache
    read as "../../../root/.cache/..." in the config and in every report)."""
    rel = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    return path.resolve().as_posix() if rel.startswith("../..") else rel


def render_starter(loaded: LoadedModel, model: str | None, out: Path,
                   input_size: tuple[int, int] | None = None) -> str:
    """The starter ``edgeship.toml`` text for ``loaded`` (loaded from ``model``; None: the embedded demo) to be
    written at ``out``: every table and key of the config (:data:`KEYS`), the settled ones as values, the others
    commented out. Paths are relative to ``out``'s folder; ``input_size`` (H, W), the size that fixed a dynamic
    input, is written as ``[model] input_size``."""
    from edgeship import __version__

    values, notes, header = _settled(loaded, model, out.parent)
    if input_size is not None:
        values["model"]["input_size"] = f"{input_size[0]}x{input_size[1]}"
        notes["model"]["input_size"] = "fixes the model's dynamic input size (None, None, None, 3)"
    mine = model is not None and not loaded.source_path.startswith("registry:")
    lines = [f"# edgeship.toml: the starter 'edgeship init' (edgeship {__version__}) wrote.",
             *(f"# {line}" for line in header),
             "#",
             "# Uncomment a line to set it; relative paths are relative to this file. Run: edgeship run "
             f"{out.name}"]
    if mine:
        lines += ["# Point [quantize] calibration and [validate] data at your images (both required): the demo's",
                  "# digits fit only the demo model."]
    for table in TABLES:
        lines += ["", f"[{table}]"]
        for key, spec in KEYS[table].items():
            why = notes[table].get(key, spec.why)
            if key in values[table]:
                lines.append(_line(key, values[table][key], why, commented=False))
            else:
                lines.append(_line(key, spec.example, why, commented=True))
    return "\n".join(lines) + "\n"


def write_starter(out: str | Path = "edgeship.toml", model: str | None = None, force: bool = False,
                  echo: Any = print, input_size: tuple[int, int] | None = None) -> Path:
    """Write the starter ``edgeship.toml`` for ``model`` (a .keras/.h5/SavedModel path or a variant name; None:
    the embedded demo) at ``out``, atomically (:func:`edgeship.fileio.write_bytes_atomic`), and return its path.
    ``input_size`` (H, W) fixes a dynamic input size, as ``[model] input_size`` (written as a value then).

    Raises :class:`UserError` (exit 2, one line) when ``out`` exists and ``force`` is False, when ``out`` is a
    directory, and for a model that cannot be loaded in safe mode (missing, not a model, or holding code that would
    need ``--trust-model``); nothing is written then. OSError (a folder that cannot be written) is the
    environment's (exit 3)."""
    from edgeship.fileio import write_bytes_atomic
    from edgeship.models.loading import load_model

    path = Path(out)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give the file to write, e.g. --out {path / 'edgeship.toml'}")
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError(f"{path} exists: pass --force to overwrite it")
    notes: list[str] = []
    try:
        loaded = load_model(model, trust_model=False, echo=notes.append, input_size=input_size)
    except UserError as e:
        if "--trust-model" not in str(e):
            raise
        raise UserError(f"{e}; edgeship init reads models in safe mode only: write the demo's starter "
                        "('edgeship init') and set [model] path and trust = true in it by hand") from None
    text = render_starter(loaded, model, path, input_size)
    write_bytes_atomic(path, text.encode("utf-8"))
    echo(f"wrote {path} for {loaded.spec.name}: "
         + ("set [quantize] calibration and [validate] data to your images, then run: "
            if model is not None and not loaded.source_path.startswith("registry:") else "run: ")
         + f"edgeship run {path}")
    return path
