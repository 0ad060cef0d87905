"""Resolve ``--model NAME|PATH`` to a Keras model plus its :class:`ModelSpec`.

Safe by default (the trust boundary): nothing from a model file executes unless the user passes ``--trust-model``
(or ``trust = true`` in edgeship.toml). A ``.keras`` or ``.h5`` file's config is read as JSON *before* Keras
deserialises anything, and a model holding Lambda layers (marshalled Python bytecode) or custom classes (code that
must be imported) is refused; a SavedModel's graph is read from ``saved_model.pb`` before TensorFlow loads it, and
one holding an op outside the allow-list of pure tensor ops (file I/O, ``PyFunc``, ``PrintV2``...) is refused
(:mod:`edgeship.models.graph_check`).

Over 400 lines on purpose: the trust boundary (what may run while a file loads) and the three source formats
(.keras, Keras 2 .h5, SavedModel) stay together, so the boundary is read in one place.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgeship.errors import UserError
from edgeship.models.registry import get_variant, looks_like_variant_name
from edgeship.models.spec import ModelSpec, Preprocessing, read_labels
from edgeship.types import ColorOrder, OutputKind

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_MODEL = DEMO_DIR / "model.keras"
DEMO_LABELS = DEMO_DIR / "labels.txt"
DEMO_NAME = "edgeship_demo"

#: InGraphNormalisation.found of a uint8-input model that does not normalise after the cast (it takes raw pixels)
UINT8_INPUT = "its uint8 input"
_KERAS_MODULES = ("keras", "tf_keras", "tensorflow")
_UNSAFE_CLASSES = ("Lambda", "TFOpLambda", "SlicingOpLambda")


@dataclass
class LoadedModel:
    keras_model: Any
    spec: ModelSpec
    source_path: str  # a file path, or "registry:<name>"
    source_sha256: str | None
    # What loading changed or found, one line each (a Keras 2 file's translated config differences); also printed
    notes: list[str] = field(default_factory=list)
    # the normalisation the model's own graph applies (edgeship.models.innorm.InGraphNormalisation), or None
    in_graph: Any = None
    # Where spec.preprocessing and spec.labels came from, said once by every command that makes or judges files
    # (describe_input) and recorded with them: "found in the graph (...)", "declared (--mean/--std)", "assumed ...".
    preprocessing_source: str = "assumed: nothing declared and no normalisation found in the graph"
    labels_source: str = "none: classes are numbered 0..K-1"
    # How images of another size or aspect are fitted to the input (edgeship.types.Resize), recorded in the manifest
    resize: str = "stretch"

    def source_dict(self) -> dict[str, Any]:
        return {"path": self.source_path, "sha256": self.source_sha256}

    @property
    def takes_demo_data(self) -> bool:
        """True for the embedded demo (by path or by its sha256) and the registry's variants: the only models the
        demo's images (handwritten digits) may stand in for when no data is given. Any other model without
        ``--data``/``--calibration`` is refused (:func:`demo_default`): digits say nothing of a user's model."""
        if self.source_path.startswith("registry:"):
            return True
        return not self.source_path.startswith("python:") and _is_demo_file(Path(self.source_path),
                                                                             self.source_sha256)


def source_takes_demo_data(model: "str | Path | None") -> bool:
    """:attr:`LoadedModel.takes_demo_data` before the model loads, from ``--model`` alone (None: the demo; a variant
    name; a path to the demo or a byte-identical copy), so a missing data set fails in a second, not after the
    model has loaded and its preprocessing been settled. A path that does not exist is left to the loader."""
    if model is None:
        return True
    path = Path(model)
    if not path.exists():
        return looks_like_variant_name(str(model))
    return _is_demo_file(path)


def _is_demo_file(path: Path, sha256: str | None = None) -> bool:
    """``path`` is the embedded demo model, or a byte-identical copy of it (``sha256``: the file's, when known; else
    hashed, and only when its size is the demo's)."""
    if path.resolve() == DEMO_MODEL:
        return True
    if sha256 is None:
        if not path.is_file() or path.stat().st_size != DEMO_MODEL.stat().st_size:
            return False
        from edgeship.fileio import sha256_path

        sha256 = sha256_path(path)
    return sha256 == _demo_sha256()


@functools.cache
def _demo_sha256() -> str:
    from edgeship.fileio import sha256_path

    return sha256_path(DEMO_MODEL)


def demo_default(loaded: LoadedModel, default: Path) -> Path | None:
    """``default`` (a demo image set) when ``loaded`` may take the demo's data (:attr:`LoadedModel.takes_demo_data`),
    else None, so that :func:`edgeship.data.check_data` refuses the missing option in one line."""
    return default if loaded.takes_demo_data else None


def load_model(
    model: str | Path | Any | None = None,
    *,
    trust_model: bool = False,
    labels: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    echo: Any = None,
    output_kind: str | OutputKind | None = None,
    input_size: tuple[int, int] | None = None,
    default_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """``model``: None (the embedded demo), a registry name, a path (.keras, .h5, SavedModel dir), or an already
    built ``keras.Model``. ``labels``/``preprocessing`` override what is derived from the model; ``output_kind``
    (an :class:`OutputKind` value) overrides the detected kind.

    An unlabelled linear output (detected as logits, no labels given or found beside the model) is ambiguous: K
    linear values may be K class scores or K coordinates (a flattened detection head). It is taken as a
    ``regression`` output, judged value by value and never shipped as a K-class Core ML classifier with invented
    labels, and ``echo`` says so, unless ``output_kind`` says otherwise (issue 24).

    Normalisation inside the model's graph (:mod:`edgeship.models.innorm`) is looked for in every source format;
    when found, the preprocessing becomes the identity (raw 0-255 pixels) and ``echo`` (default: a line on
    stderr; pass ``lambda _: None`` to keep quiet) says what was found. A ``preprocessing`` that normalises on
    top of it raises :class:`UserError` (see :func:`declare_preprocessing`).

    ``input_size`` (H, W) fixes a dynamic spatial size (refused without it, and on a fixed size it contradicts).
    What the converters cannot take as it is, the model is rebuilt for (:mod:`edgeship.models.setups`): a uint8
    input takes float32 raw pixels cast inside (preprocessing: the identity); a float16 compute policy
    (``mixed_float16``) becomes float32, said through ``echo`` and in ``notes``; several inputs are refused.
    ``default_size``: the size a dynamic one takes without ``input_size`` (validate: the size of the files)."""
    from edgeship.fileio import sha256_path
    from edgeship.models.innorm import InGraphNormalisation, detect, is_identity

    notes: list[str] = []
    demo = model is None
    if demo:
        model = DEMO_MODEL
    in_graph = None
    from edgeship.models.setups import fit_for_conversion, takes_uint8

    fitted: list[str] = []  # what fitting the model for the converters changed (mixed_float16), one line each
    if not isinstance(model, (str, Path)):
        name = getattr(model, "name", "model")
        km, src, sha = fit_for_conversion(model, f"model '{name}'", input_size, fitted, default_size), f"python:{name}", None
        spec = derive_spec(km, name=name)
        in_graph = detect(km)
    elif isinstance(model, str) and not Path(model).exists() and looks_like_variant_name(model):
        variant = get_variant(model)
        km, src, sha = variant.build(), f"registry:{variant.name}", None
        km = fit_for_conversion(km, f"variant {variant.name}", input_size, fitted, default_size)
        spec = variant.spec()
        if spec.in_graph_normalisation:
            in_graph = InGraphNormalisation(Preprocessing(), "MobileNetV3's include_preprocessing (a Rescaling layer)")
    else:
        path = Path(model)
        km = _load_path(path, trust_model, notes, input_size, default_size)
        km = fit_for_conversion(km, path.name, input_size, fitted, default_size)
        src, sha = str(path), sha256_path(path)
        spec = derive_spec(km, name=path.stem if path.is_file() else path.name)
        in_graph = None if demo else detect(km, saved_model=path.is_dir())
        beside = path.parent / "labels.txt" if path.is_file() else path / "labels.txt"
        if labels is None and beside.is_file():
            labels = beside
    for note in fitted:
        notes.append(note)
        (echo or _note)(note)
    uint8 = takes_uint8(km)
    if uint8 and in_graph is None:  # nothing normalises after the cast: the model takes the raw pixels as they are
        in_graph = InGraphNormalisation(Preprocessing.identity(), UINT8_INPUT)
    if in_graph is not None and not spec.in_graph_normalisation:
        spec = spec.replace(preprocessing=replace(Preprocessing.identity(), layout=spec.preprocessing.layout),
                            in_graph_normalisation=in_graph.describe())
        if preprocessing is None and uint8:
            inside = "" if is_identity(in_graph.preprocessing) else f" and normalises them ({in_graph.describe()})"
            (echo or _note)(f"{spec.name} takes uint8 pixels (cast inside from float32, rounded and clipped){inside}: "
                            "its files take raw 0-255 RGB pixels (preprocessing set to the identity)")
        elif preprocessing is None:
            (echo or _note)(f"{spec.name} normalises its own input ({in_graph.describe()}): its files take raw 0-255 "
                            "RGB pixels (preprocessing set to the identity)")
    if not demo and not src.startswith("registry:"):
        spec = _detect_qat(km, spec, model, echo)
    if demo:
        spec = spec.replace(name=DEMO_NAME)
    labels_source = LoadedModel.labels_source
    if labels is not None:
        spec = spec.replace(labels=read_labels(labels))
        labels_source = ("the demo's labels.txt" if demo else "labels.txt beside the model"
                         if Path(labels) == beside_labels(model) else f"{labels}")
    if output_kind:
        spec = spec.with_output_kind(output_kind)
    elif spec.output_kind is OutputKind.LOGITS and labels is None and not src.startswith("registry:"):
        spec = spec.with_output_kind(OutputKind.REGRESSION)
        k = spec.num_classes
        (echo or _note)(f"{spec.name}'s output is {k} linear value{'s' if k != 1 else ''} that no labels name: judged "
                        "value by value as a regression output (no Core ML classifier); if it is a "
                        f"{k}-class classifier, give --labels FILE or --output-kind logits")
    elif spec.output_kind is OutputKind.REGRESSION and len(spec.output_shape) == 3:
        if labels is not None:  # labels name the last axis of an (H, W, classes) map: a segmentation
            spec = spec.with_output_kind(OutputKind.SEGMENTATION)
        else:
            (echo or _note)(f"{spec.name}'s output is a {'x'.join(map(str, spec.output_shape))} map that no labels "
                            "name and no softmax ends: judged value by value as a regression output; if it is a "
                            "per-pixel class map, give --labels FILE or --output-kind segmentation")
    loaded = LoadedModel(km, spec, src, sha, notes, in_graph, labels_source=labels_source)
    if uint8 and in_graph is not None and is_identity(in_graph.preprocessing):
        loaded.preprocessing_source = "the model's uint8 input (raw 0-255 pixels)"
    elif in_graph is not None:
        loaded.preprocessing_source = f"found in the graph ({in_graph.describe()})"
    elif demo:
        loaded.preprocessing_source = "the demo's training (edgeship/demo/demo.json)"
    elif src.startswith("registry:"):
        loaded.preprocessing_source = "the keras.applications convention of the variant"
    if preprocessing is not None:
        check_declared(loaded, preprocessing, "the declared preprocessing")
        loaded.spec = spec.replace(preprocessing=preprocessing)
        loaded.preprocessing_source = "declared"
    return loaded


def _detect_qat(km: Any, spec: ModelSpec, model: Any, echo: Any) -> ModelSpec:
    """``spec`` with ``qat`` set when the model's graph holds FakeQuant ops (:mod:`edgeship.models.qat`), said in
    one line."""
    from edgeship.models import qat

    saved_model = isinstance(model, (str, Path)) and Path(model).is_dir()
    found = qat.saved_model_fake_quants(Path(model)) if saved_model else qat.keras_fake_quants(km)
    if not found:
        return spec
    (echo or _note)(f"{spec.name} is quantisation-aware trained ({qat.describe(found)}): its int8 files take the "
                    "trained ranges; its float files compute the same fake quantisation and are judged by the "
                    "policy's [qat.*] gates")
    return spec.replace(qat=qat.describe(found))


def beside_labels(model: Any) -> Path | None:
    """The labels.txt a model file's folder (or SavedModel directory) may hold, for a path; None otherwise."""
    if not isinstance(model, (str, Path)):
        return None
    path = Path(model)
    return path.parent / "labels.txt" if path.is_file() else path / "labels.txt"


def describe_input(loaded: LoadedModel) -> str:
    """One line: the preprocessing the files expect and where it came from, the colour order, the pixel range, and
    where the labels came from (issue 23: every command that makes or judges files says it once)."""
    from edgeship.models.innorm import formula

    spec = loaded.spec
    pre = spec.preprocessing
    return (f"input: {formula(replace(pre, color=ColorOrder.RGB))} per channel on {pre.color.value.upper()} pixels "
            f"0-255 (normalised range {pre.value_range[0]:g} to {pre.value_range[1]:g}), "
            f"{loaded.preprocessing_source}; " + (f"labels: {loaded.labels_source} ({spec.num_classes} classes)"
                                                  if OutputKind(spec.output_kind).has_classes else
                                                  f"output: {spec.num_classes} values ({spec.output_kind})"))


def _note(message: str) -> None:
    print(f"edgeship: {message}", file=sys.stderr)


def declare_preprocessing(loaded: LoadedModel, *, mean: tuple[float, float, float] | None = None,
                          std: tuple[float, float, float] | None = None, bgr: bool = False,
                          what: str = "--mean/--std/--bgr", force: bool = False) -> None:
    """Apply the user's declared preprocessing (0-255 pixel units; each given value replaces the model's own) to
    ``loaded.spec``. Raises :class:`UserError` (one line) when the declaration normalises a model whose graph
    already normalises (mean/std on top of in-graph arithmetic), or reverses the channels of a graph that already
    reverses them: the files would normalise twice (issue 13). A mean/std outside every image-model convention
    (0-1 units, :func:`edgeship.models.spec.check_declared_units`) is refused unless ``force``."""
    if not force:
        from edgeship.models.spec import check_declared_units

        check_declared_units(mean, std, what.replace("/--bgr", "").replace("/bgr", ""))
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = mean
    if std is not None:
        changes["std"] = std
    if bgr:
        changes["color"] = "bgr"
    if not changes:
        return
    declared = replace(loaded.spec.preprocessing, **changes)
    check_declared(loaded, declared, what)
    loaded.spec = loaded.spec.replace(preprocessing=declared)
    loaded.preprocessing_source = f"declared ({what})"


def check_declared(loaded: LoadedModel, declared: Preprocessing, what: str) -> None:
    """UserError when ``declared`` and the model's graph both normalise, or both reverse the channel order."""
    from edgeship.models.innorm import formula
    from edgeship.types import ColorOrder

    found = loaded.in_graph
    if found is None:
        return
    scales = lambda p: any(abs(m) > 1e-6 for m in p.mean) or any(abs(s - 1) > 1e-6 for s in p.std)  # noqa: E731
    if scales(declared) and scales(found.preprocessing):
        raise UserError(
            f"{loaded.spec.name} already normalises its input inside ({found.describe()}), and {what} declares "
            f"{formula(replace(declared, color=ColorOrder.RGB))} on top: drop {what} (its files take raw 0-255 pixels)")
    if scales(declared) and found.found == UINT8_INPUT:
        raise UserError(
            f"{loaded.spec.name} takes uint8 pixels (its input is uint8), and {what} declares "
            f"{formula(replace(declared, color=ColorOrder.RGB))}: drop {what} (its files take raw 0-255 pixels)")
    if declared.color is ColorOrder.BGR and found.preprocessing.color is ColorOrder.BGR:
        raise UserError(
            f"{loaded.spec.name} already reverses RGB to BGR inside ({found.describe()}), and {what} declares BGR "
            f"too: drop the BGR declaration (its files take RGB pixels)")


def derive_spec(km: Any, name: str) -> ModelSpec:
    """What the model itself says: input size, class count, whether it rescales inside, softmax or logits."""
    in_shape = tuple(km.input_shape[1:]) if not isinstance(km.input_shape, list) else None
    if in_shape is not None and len(in_shape) == 3 and None not in in_shape and in_shape[-1] != 3:
        raise UserError(
            f"model '{name}' takes {in_shape[-1]}-channel images (input {km.input_shape}); edgeship supports "
            f"3-channel RGB/BGR input only: a {in_shape[-1]}-channel model cannot be given its clients' image input "
            "(MediaPipe's and Core ML's image inputs are RGB). Retrain with 3 channels, or repeat a gray channel "
            "three times in a first layer"
        )
    if in_shape is None or len(in_shape) != 3 or in_shape[-1] != 3 or None in in_shape:
        raise UserError(
            f"model '{name}' has input shape {km.input_shape}: edgeship needs one image input of fixed size "
            "(batch, height, width, 3); re-save the model with a fixed input size"
        )
    out_shape = km.output_shape
    if isinstance(out_shape, (list, dict)) or (isinstance(out_shape, tuple) and out_shape
                                                 and isinstance(out_shape[0], (tuple, list))):
        shapes = out_shape.values() if isinstance(out_shape, dict) else out_shape
        # the layers the outputs come from, as the user named them (the tensors are "keras_tensor_7"...)
        names = list(getattr(km, "output_names", None) or [])
        listed = ", ".join(f"{n} {tuple(s)}" for n, s in zip(names or [f"output_{i}" for i in range(len(shapes))],
                                                             shapes))
        raise UserError(f"model '{name}' has {len(shapes)} outputs ({listed}): edgeship validates one output per "
                        "model; concatenate the heads into one output (judged value by value as a regression) or "
                        "ship each head as its own model")
    if len(out_shape) < 2 or any(d is None for d in out_shape[1:]):
        raise UserError(f"model '{name}' has output shape {out_shape}: edgeship needs one output of fixed shape "
                        "(batch, ...); re-save the model with a fixed input size")
    layers = list(walk_layers(km))
    rescales_inside = any(type(l).__name__ == "Rescaling" for l in layers[:4])
    preprocessing = Preprocessing.identity() if rescales_inside else Preprocessing()
    kind = detect_output_kind(km, layers, preprocessing)[0]
    output_shape: tuple[int, ...] = tuple(int(d) for d in out_shape[1:]) if len(out_shape) > 2 else ()
    if output_shape and kind.per_image:
        # not one vector: a softmax over the last axis of an (H, W, classes) map is a segmentation; any other map
        # is a regression until labels name its classes (load_model)
        kind = (OutputKind.SEGMENTATION if kind is OutputKind.PROBABILITIES and len(output_shape) == 3
                else OutputKind.REGRESSION)
    return ModelSpec(
        name=name,
        input_shape=in_shape,
        num_classes=int(out_shape[-1]),
        preprocessing=preprocessing,
        output_kind=kind,
        output_shape=output_shape,
    )


#: Layers that only move, copy or pass values on: looked through when finding what computes the output.
_PASS_THROUGH = {"Flatten", "Reshape", "Dropout", "SpatialDropout2D", "Identity", "InputLayer", "GaussianNoise",
                 "ActivityRegularization"}
#: Layers whose output is a feature vector, not class scores, when one is the model's last computing layer.
_FEATURE_LAYERS = {"GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "AveragePooling2D",
                   "MaxPooling2D", "UnitNormalization", "BatchNormalization", "LayerNormalization", "ReLU"}


def detect_output_kind(km: Any, layers: list[Any] | None = None,
                       preprocessing: Preprocessing | None = None) -> tuple[OutputKind, str]:
    """The output kind and how it was found. From the last layer that computes something (looking through
    Flatten/Reshape/Dropout, as MobileNetV3's Conv2D + Flatten head): a softmax -> probabilities, a sigmoid ->
    multi-label, pooling/normalisation (a headless backbone, an L2-normalised head) -> embedding, a linear Dense or
    Conv -> logits. A model without inspectable layers (a SavedModel's graph) is probed: 4 random images
    (``preprocessing`` applied) through the model; rows in [0, 1] summing to 1 -> probabilities, in [0, 1] not
    summing to 1 -> multi-label, else logits (an embedding cannot be told from logits by its values: give
    ``--output-kind embedding``)."""
    layers = list(walk_layers(km)) if layers is None else layers
    for layer in reversed(layers):
        cls = type(layer).__name__
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if cls == "Softmax" or act == "softmax":
            return OutputKind.PROBABILITIES, f"{cls} '{layer.name}' ends in a softmax"
        if cls == "Activation" and act in ("linear", ""):
            continue
        if cls in _PASS_THROUGH:
            continue
        if act in ("sigmoid", "hard_sigmoid"):
            return OutputKind.MULTILABEL, f"{cls} '{layer.name}' ends in a sigmoid"
        if cls in _FEATURE_LAYERS:
            return OutputKind.EMBEDDING, f"the output is {cls} '{layer.name}' (features, no classifier)"
        if cls in ("Dense", "Conv2D", "EinsumDense"):
            return OutputKind.LOGITS, f"{cls} '{layer.name}' ends linear"
        if cls != "TFSMLayer":
            return OutputKind.LOGITS, f"{cls} '{layer.name}' ends the model"
        break
    import numpy as np

    pre = preprocessing or Preprocessing()
    pixels = np.random.default_rng(0).uniform(0, 255, (4, *km.input_shape[1:])).astype(np.float32)
    out = np.asarray(km(pre.apply(pixels), training=False), dtype=np.float64)
    in_unit = bool(np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6))
    if in_unit and np.allclose(out.sum(axis=1), 1.0, atol=1e-3) and out.shape[1] > 1:
        return OutputKind.PROBABILITIES, "its outputs on probe images are in [0, 1] and sum to 1"
    if in_unit:
        return OutputKind.MULTILABEL, "its outputs on probe images are in [0, 1] and do not sum to 1"
    return OutputKind.LOGITS, "its outputs on probe images are not probabilities"


def walk_layers(km: Any) -> Iterator[Any]:
    """Every leaf layer, nested models flattened, in model order."""
    for _, layer in layer_paths(km):
        yield layer


def layer_paths(km: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, layer) for every leaf layer, in model order: ``path`` is the names of the nested models the layer
    sits in, then its own name; the outermost model's own name is left out (``('mobilenetv2_1.00_160',
    'block_3_project_BN')`` for a backbone inside the user's model, ``('dense',)`` for a top-level layer)."""
    for layer in getattr(km, "layers", []):
        path = (*prefix, layer.name)
        if hasattr(layer, "layers"):
            yield from layer_paths(layer, path)
        else:
            yield path, layer


def unique_layer_names(paths: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """{path: name}: each layer's innermost name, or its whole path joined by '/' when that name is shared by
    layers in different nested models (two backbones that both have a 'conv1'), so no two layers share a name."""
    paths = list(dict.fromkeys(paths))
    count: dict[str, int] = {}
    for p in paths:
        count[p[-1]] = count.get(p[-1], 0) + 1
    return {p: (p[-1] if count[p[-1]] == 1 else "/".join(p)) for p in paths}


def _load_path(path: Path, trust_model: bool, notes: list[str] | None = None,
               input_size: tuple[int, int] | None = None, default_size: tuple[int, int] | None = None) -> Any:
    if not path.exists():
        if looks_like_variant_name(str(path)):
            get_variant(str(path))  # raises the 'unknown variant' error with suggestions
        raise UserError(f"model not found: {path} (give a .keras, .h5 or SavedModel directory, or a variant name)")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"{path} is a directory without saved_model.pb: not a SavedModel")
        if not trust_model:
            from edgeship._tf import tf
            from edgeship.models.graph_check import check_saved_model_graph

            tf()  # imported quietly: the graph check's protobuf import would load TF and its log lines (issue 24)
            check_saved_model_graph(path)
        return _load_saved_model(path, input_size, default_size)
    suffix = path.suffix.lower()
    translations: list[Any] = []
    if suffix == ".keras":
        config = _read_keras_config(path)
    elif suffix in (".h5", ".hdf5"):
        from edgeship.models.legacy import translate_config

        config, translations = translate_config(_read_h5_config(path))
    else:
        raise UserError(f"{path} is not a model edgeship can load: give a .keras, .h5 or SavedModel directory")
    unsafe = sorted(set(find_unsafe_objects(config)))
    if unsafe and not trust_model:
        raise UserError(
            f"{path.name} holds code that loading would execute ({', '.join(unsafe)}); "
            "refusing to load it. Pass --trust-model if you trust where this file comes from"
        )
    from edgeship._tf import keras, silenced

    k = keras()

    def load(p: Path) -> Any:
        with silenced():
            return k.saving.load_model(p, compile=False, safe_mode=not trust_model)

    try:
        if translations:
            from edgeship.models.legacy import load_translated_h5

            model = load_translated_h5(path, config, load)
        else:
            model = load(path)
    except Exception as e:  # Keras raises ValueError/TypeError/OSError variously for a file it cannot read
        raise UserError(f"cannot load {path.name} as a Keras model: {_keras_error_cause(e)}; "
                        f"{_resave_hint(suffix)}") from None
    for t in translations:
        line = f"{path.name}: Keras 2 file, {t.note()}"
        print(f"edgeship: note: {line}", file=sys.stderr)
        if notes is not None:
            notes.append(line)
    return model


def _keras_error_cause(e: BaseException) -> str:
    """The cause of a Keras loading error, first and on one line. Keras wraps a layer's error as "Error when
    deserializing class 'X' using config={...the whole config...}.\n\nException encountered: <cause>", so the
    first line alone is the (cut) config and never the cause."""
    text = str(e).strip() or type(e).__name__
    m = re.search(r"Error when deserializing class '([^']+)' using config=\{'name': '([^']*)'", text)
    cause = text.rsplit("Exception encountered:", 1)[-1].strip() if "Exception encountered:" in text else text
    cause = " ".join(cause.split())
    if len(cause) > 240:
        cause = cause[:237] + "..."
    return f"layer '{m.group(2)}' ({m.group(1)}): {cause}" if m else cause


def _resave_hint(suffix: str) -> str:
    if suffix in (".h5", ".hdf5"):
        return ("re-save it from the Keras that trained it as a SavedModel (model.export(dir) or, in Keras 2, "
                "model.save(dir)) or as .keras, and give that")
    return "re-save it with model.save('model.keras') from the Keras that trained it, or give a SavedModel"


def _read_keras_config(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError):
        raise UserError(f"{path} is not a Keras model file (.keras archive with config.json)") from None


def _read_h5_config(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        raise UserError(f"{path} is not an HDF5 model file") from None
    if raw is None:
        raise UserError(f"{path} holds weights only (no model_config): save the whole model, not just its weights")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def find_unsafe_objects(config: Any) -> Iterator[str]:
    """Names of objects in a Keras config whose loading runs user code: Lambda layers and any class that does
    not come from Keras itself (registered custom layers, activations, initialisers...)."""
    if isinstance(config, list):
        for item in config:
            yield from find_unsafe_objects(item)
        return
    if not isinstance(config, dict):
        return
    cls = config.get("class_name")
    if isinstance(cls, str):
        inner = config.get("config")
        name = config.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
        label = f"{cls} '{name}'" if name else cls
        if cls in _UNSAFE_CLASSES:
            yield label
        elif cls.startswith("__") and cls.endswith("__"):
            pass  # Keras' own serialisation markers (__keras_tensor__, __tuple__, __numpy__ ...)
        elif "module" in config:
            module = config.get("module")
            if cls != "function" and (module is None or str(module).split(".")[0] not in _KERAS_MODULES):
                yield label
            elif cls == "function" and str(module).split(".")[0] not in _KERAS_MODULES:
                yield f"function '{config.get('config')}'"
        elif not _is_keras_class(cls):
            yield label
    for value in config.values():
        yield from find_unsafe_objects(value)


def _is_keras_class(name: str) -> bool:
    """For legacy .h5 configs, which carry no module: is ``name`` one of Keras' own classes?"""
    from edgeship._tf import keras

    k = keras()
    if name in ("Functional", "Sequential", "Model", "DTypePolicy", "Policy", "__tuple__"):
        return True
    spaces = (k.layers, k.initializers, k.regularizers, k.constraints, k.activations, k.optimizers, k.losses,
              k.metrics, k.dtype_policies)
    return any(hasattr(space, name) for space in spaces)


def _load_saved_model(path: Path, input_size: tuple[int, int] | None = None,
                      default_size: tuple[int, int] | None = None) -> Any:
    """Wrap a SavedModel's serving signature as a Keras model. It runs TF graph ops, never Python code. A uint8
    signature (TF-Hub, Object Detection API) gets float32 raw pixels cast inside (rounded, clipped: the layer of
    :func:`edgeship.models.setups.raw_pixels_layer`); a dynamic height and width are fixed to ``input_size``."""
    from edgeship._tf import keras, silenced, tf
    from edgeship.models.setups import fixed_shape, raw_pixels_layer, refuse_several_inputs

    t, k = tf(), keras()
    try:
        with silenced():
            loaded = t.saved_model.load(str(path))
            sig = loaded.signatures.get("serving_default")
            if sig is None:
                raise UserError(f"SavedModel {path} has no 'serving_default' signature")
            inputs = sig.structured_input_signature[1]
            refuse_several_inputs(f"SavedModel {path.name}'s serving signature",
                                  [(name, s.shape, s.dtype) for name, s in inputs.items()])
            spec = next(iter(inputs.values()))
            if spec.dtype not in (t.float32, t.uint8):
                raise UserError(f"SavedModel {path.name} takes {spec.dtype.name} images (serving signature input "
                                f"{spec.shape}): edgeship feeds float32 or uint8 pixels; re-export it with one")
            shape = fixed_shape(f"SavedModel {path.name}", tuple(spec.shape[1:]) if spec.shape.rank else (),
                                input_size, default_size)
            inp = k.Input(shape=shape, name="image")
            x = raw_pixels_layer()(name="raw_pixels_to_uint8")(inp) if spec.dtype == t.uint8 else inp
            out = k.layers.TFSMLayer(str(path), call_endpoint="serving_default")(x)
            if isinstance(out, dict):
                if len(out) != 1:
                    raise UserError(f"SavedModel {path} has {len(out)} outputs; edgeship needs one (batch, classes)")
                out = next(iter(out.values()))
            return k.Model(inp, out, name=path.name)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load SavedModel {path}: {_keras_error_cause(e)}; re-export it with a "
                        "'serving_default' signature taking one image batch (model.export(dir))") from None
