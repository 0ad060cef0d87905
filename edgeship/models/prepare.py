"""Which model, and how it is fed: the ``[model]`` table of ``edgeship.toml`` and the CLI's model arguments as one
options object, and the one function that turns it into a :class:`~edgeship.models.loading.LoadedModel`.

``edgeship export|quantize|validate`` (edgeship/cli.py) and ``edgeship run`` (edgeship/pipeline.py) both prepare
their model here, in one order: the declared units checked before anything is loaded, the model loaded, the
declaration applied (refused where it would normalise twice), the graph's own findings said, the output kind
overridden, an assumed preprocessing settled on the user's images where there are some, the preprocessing baked last (so a baked model records the declared preprocessing, issue 13)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from edgeship.data import DataSource
    from edgeship.models.loading import LoadedModel

Triplet = tuple[float, float, float]


@dataclass(frozen=True)
class ModelOptions:
    """The model stage's options (``[model]``; CLI ``--model --labels --trust-model --mean --std --bgr
    --force-preprocessing --output-kind --bake-preprocessing --input-size``).

    ``model``: a variant name, a path (.keras, .h5, SavedModel directory, .tflite) or None (the embedded demo).
    ``mean``/``std``: the declared normalisation in 0-255 pixel units, three floats each (None: the model's own).
    ``force_preprocessing``: accept a mean/std outside every image-model convention
    (:func:`edgeship.models.spec.check_declared_units`). ``output_kind``: an :class:`edgeship.types.OutputKind`
    value (None: detected from the model). ``input_size``: (H, W) for a model whose input size is dynamic
    (``(None, None, None, 3)``; refused without it, and where a fixed size differs). ``resize``: how images of
    another size or aspect are fitted to the input (:class:`edgeship.types.Resize`), recorded in the manifest."""

    model: str | None = None
    labels: str | None = None
    trust_model: bool = False
    mean: Triplet | None = None
    std: Triplet | None = None
    bgr: bool = False
    force_preprocessing: bool = False
    output_kind: str | None = None
    bake_preprocessing: bool = False
    input_size: tuple[int, int] | None = None  # (H, W): fixes a dynamic spatial size (edgeship.models.setups)
    resize: str | None = None  # how other-sized images are fitted (edgeship.types.Resize; None: stretch)

    def check(self, what: str = "--mean/--std") -> None:
        """What can be checked before the model loads (UserError, one line): the declared mean/std's units (unless
        forced; ``what`` names them) and the label file (found, UTF-8, one label per line)."""
        if not self.force_preprocessing:
            from edgeship.models.spec import check_declared_units

            check_declared_units(self.mean, self.std, what)
        if self.labels is not None:
            from edgeship.models.spec import read_labels

            read_labels(self.labels)


#: Images the preprocessing inference needs before it judges (the contract check's ``min_samples``), and the most
#: it uses (evenly spread over the set): see :mod:`edgeship.models.infer_preprocessing`
MIN_INFERENCE_IMAGES, INFERENCE_IMAGES = 20, 256


def inference_applies(loaded: LoadedModel, count: int) -> bool:
    """Whether the preprocessing inference can judge ``loaded`` on ``count`` images: trained weights (not a
    registry variant's random ones), one class per image, at least :data:`MIN_INFERENCE_IMAGES` images."""
    kind = loaded.spec.output_kind
    return (not loaded.source_path.startswith("registry:") and kind is not None and kind.is_classification
            and count >= MIN_INFERENCE_IMAGES)


def settle_preprocessing(loaded: LoadedModel, data: DataSource, *, what: str = "--mean/--std/--bgr",
                         echo: Callable[[str], None] = print) -> None:
    """An *assumed* preprocessing (nothing declared, nothing found in the graph) settled from the model's behaviour
    on ``data`` before any file is made (issue 23, item 2): where one convention wins clearly it is used, said
    through ``echo`` and recorded as ``inferred``; where none does, :class:`edgeship.errors.UserError` (exit 2) asks
    for the declaration (``what``), so no file is made for a feed nobody chose. Declared or found preprocessing,
    and models the inference cannot judge (:func:`inference_applies`), are left as they are; ``edgeship validate``
    judges a declaration against the same conventions."""
    if not loaded.preprocessing_source.startswith("assumed") or not inference_applies(loaded, data.count):
        return
    from edgeship.errors import UserError
    from edgeship.models.infer_preprocessing import Verdict, infer_preprocessing

    images, labels = data.spread(INFERENCE_IMAGES)
    spec = loaded.spec
    result = infer_preprocessing(loaded, images, declared=spec.preprocessing, source="assumed", labels=labels,
                                 probabilities=spec.outputs_probabilities)
    if result.verdict is not Verdict.INFERRED or result.chosen is None:
        raise UserError(f"{result.message.replace('(--mean, --std, --bgr)', f'({what})')}")
    chosen = result.chosen
    loaded.spec = spec.replace(preprocessing=replace(spec.preprocessing, mean=chosen.mean, std=chosen.std,
                                                     color=chosen.color))
    loaded.preprocessing_source = (f"inferred from the model's behaviour ({result.best.name}: {result.score_name} on "
                                   f"{result.samples} {'labelled' if result.labelled else 'unlabelled'} images)")
    echo(result.message)


def prepare_model(options: ModelOptions, *, what: str = "--mean/--std/--bgr",
                  echo: Callable[[str], None] = print,
                  settle_on: Callable[[LoadedModel], DataSource] | None = None) -> LoadedModel:
    """Load ``options.model`` and apply the declared preprocessing, output kind and baking. ``what`` names the
    declaration in errors (``--mean/--std/--bgr`` or ``[model] mean/std/bgr``); ``echo`` receives what was found in
    the model's graph, after the declaration is known not to clash with it. ``settle_on``: the images an assumed
    preprocessing is settled on (:func:`settle_preprocessing`; called with the loaded model, None: left assumed).
    Raises :class:`edgeship.errors.UserError`
    for a missing or unreadable model, a declaration in the wrong units, or one that would normalise twice, and for
    an assumed preprocessing the images do not settle."""
    from edgeship.models.loading import declare_preprocessing, load_model
    from edgeship.types import Resize

    options.check(what.replace("/--bgr", "").replace("/bgr", ""))
    notes: list[str] = []
    loaded = load_model(options.model, trust_model=options.trust_model, labels=options.labels, echo=notes.append,
                        output_kind=options.output_kind, input_size=options.input_size)
    loaded.resize = str(Resize.parse(options.resize or "stretch", "--resize"))  # settle_on's images are fitted so
    declare_preprocessing(loaded, mean=options.mean, std=options.std, bgr=options.bgr, what=what,
                          force=options.force_preprocessing)
    for note in notes:
        echo(note)
    if settle_on is not None:
        settle_preprocessing(loaded, settle_on(loaded), what=what, echo=echo)
    if options.bake_preprocessing:
        from edgeship.models.bake import bake_preprocessing

        resize, loaded = loaded.resize, bake_preprocessing(loaded)
        loaded.resize = resize
    return loaded
