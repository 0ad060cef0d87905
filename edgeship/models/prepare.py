"""Which model, and how it is fed: the ``[model]`` table of ``edgeship.toml`` and the CLI's model arguments as one
options object, and the one function that turns it into a :class:`~edgeship.models.loading.LoadedModel`.

``edgeship export|quantize|validate`` (edgeship/cli.py) and ``edgeship run`` (edgeship/pipeline.py) both prepare
their model here, in one order: the declared units checked before anything is loaded, the model loaded, the
declaration applied (refused where it would normalise twice), the graph's own findings said, the output kind
overridden, the preprocessing baked last (so a baked model records the declared preprocessing, issue 13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

Triplet = tuple[float, float, float]


@dataclass(frozen=True)
class ModelOptions:
    """The model stage's options (``[model]``; CLI ``--model --labels --trust-model --mean --std --bgr
    --force-preprocessing --output-kind --bake-preprocessing``).

    ``model``: a variant name, a path (.keras, .h5, SavedModel directory, .tflite) or None (the embedded demo).
    ``mean``/``std``: the declared normalisation in 0-255 pixel units, three floats each (None: the model's own).
    ``force_preprocessing``: accept a mean/std outside every image-model convention
    (:func:`edgeship.models.spec.check_declared_units`). ``output_kind``: an :class:`edgeship.types.OutputKind`
    value (None: detected from the model)."""

    model: str | None = None
    labels: str | None = None
    trust_model: bool = False
    mean: Triplet | None = None
    std: Triplet | None = None
    bgr: bool = False
    force_preprocessing: bool = False
    output_kind: str | None = None
    bake_preprocessing: bool = False

    def check_units(self, what: str = "--mean/--std") -> None:
        """The declared mean/std's units, before any work (UserError, one line; nothing when forced)."""
        if not self.force_preprocessing:
            from edgeship.models.spec import check_declared_units

            check_declared_units(self.mean, self.std, what)


def prepare_model(options: ModelOptions, *, what: str = "--mean/--std/--bgr",
                  echo: Callable[[str], None] = print) -> LoadedModel:
    """Load ``options.model`` and apply the declared preprocessing, output kind and baking. ``what`` names the
    declaration in errors (``--mean/--std/--bgr`` or ``[model] mean/std/bgr``); ``echo`` receives what was found in
    the model's graph, after the declaration is known not to clash with it. Raises :class:`edgeship.errors.UserError`
    for a missing or unreadable model, a declaration in the wrong units, or one that would normalise twice."""
    from edgeship.models.loading import declare_preprocessing, load_model

    options.check_units(what.replace("/--bgr", "").replace("/bgr", ""))
    notes: list[str] = []
    loaded = load_model(options.model, trust_model=options.trust_model, labels=options.labels, echo=notes.append)
    declare_preprocessing(loaded, mean=options.mean, std=options.std, bgr=options.bgr, what=what,
                          force=options.force_preprocessing)
    for note in notes:
        echo(note)
    if options.output_kind:
        loaded.spec = loaded.spec.with_output_kind(options.output_kind)
    if options.bake_preprocessing:
        from edgeship.models.bake import bake_preprocessing

        loaded = bake_preprocessing(loaded)
    return loaded
