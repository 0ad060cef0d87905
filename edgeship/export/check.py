"""Every exported float file is checked before it is recorded: it opens in its runtime and, on a few fixed images,
its outputs are finite and match the Keras model within the release policy's float gate for its precision.

A file that fails is a converter fault (:class:`~edgeship.errors.ConversionError`, one line naming the file and
what was wrong); the caller (:func:`edgeship.export.export_with`) is inside :func:`edgeship.fileio.atomic_path`,
so the temporary is removed and nothing is recorded.

The images: :data:`CHECK_IMAGES` seeded uint8 noise images at the model's input size. Export takes no data of
its own (``--data`` belongs to quantise and validate), and the check must work for any model and input size; it
asks whether the conversion kept the model (every op runs on every pixel), not whether the model is accurate,
and noise exercises every op as well as photographs do. Fixed seed: the same images on every run.

The gate is the release policy's (``edgeship/validate/policy.toml``, read as data, not through the validate
stage): the precision's table (``[fp32]``: max_abs_error 1e-4, times the largest reference output when that is
above 1, and top-1 equal), ``[multilabel.P]`` /
``[embedding.P]`` / ``[regression.P]`` for those outputs, and a ``[FORMAT.P]`` table's overrides. On four images an agreement below
1 means "all four"; fp16's only float gate is top-1 agreement, counted on the images whose reference answer is
confident (``[confidence] confident_margin``), since a tie of the float model itself may flip under fp16 rounding.
Core ML files run in edgeship's NumPy ML Program executor (``coreml-reference``) on every platform, the same
check everywhere (``MLModel.predict`` runs only on macOS).
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship.errors import ConversionError
from edgeship.types import Format, OutputKind, Precision

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

CHECK_IMAGES = 4
SEED = 20261207
POLICY = Path(__file__).resolve().parents[1] / "validate" / "policy.toml"


def check_images(loaded: LoadedModel) -> np.ndarray:
    h, w, _ = loaded.spec.input_shape
    return np.random.default_rng(SEED).integers(0, 256, size=(CHECK_IMAGES, h, w, 3), dtype=np.uint8)


@lru_cache(maxsize=1)
def _policy() -> dict[str, Any]:
    with open(POLICY, "rb") as f:
        return tomllib.load(f)


def float_gate(fmt: Format, precision: Precision, kind: OutputKind, qat: bool = False) -> dict[str, float]:
    """The policy's limits for a float file of ``fmt``/``precision`` whose output is ``kind``; ``qat``: of a
    quantisation-aware trained model (its ``[qat.PRECISION]`` table, see :mod:`edgeship.models.qat`)."""
    policy = _policy()
    if kind.own_tables:
        gate = dict(policy.get(str(kind), {}).get(str(precision), {}))
    elif qat and str(precision) in policy.get("qat", {}):
        gate = dict(policy["qat"][str(precision)])
    else:
        gate = dict(policy.get(str(precision), {}))
    gate.update(policy.get(str(fmt), {}).get(str(precision), {}))
    return gate


def _runner(fmt: Format, path: Path, loaded: LoadedModel) -> Any:
    if fmt is Format.COREML:
        from edgeship.runtimes.coreml_reference import CoreMLReferenceRunner

        return CoreMLReferenceRunner(path, loaded.spec.preprocessing)
    from edgeship.runtimes import runner_for

    return runner_for(fmt, path, loaded.spec.preprocessing)


def reference_outputs(loaded: LoadedModel) -> np.ndarray:
    """The Keras model's outputs on :func:`check_images`, called eagerly: no ``tf.function`` is traced, so the check
    leaves no trace in TensorFlow's process-wide counters that a later conversion could pick up."""
    x = loaded.spec.preprocessing.apply(check_images(loaded))
    return np.asarray(loaded.keras_model(x, training=False), dtype=np.float32).reshape(len(x), -1)


def problem(fmt: Format, precision: Precision, path: Path, loaded: LoadedModel,
            reference: np.ndarray | None = None) -> str | None:
    """What is wrong with the float file at ``path`` (None: it passes). ``reference``: the Keras model's outputs on
    :func:`check_images` (computed when None)."""
    from edgeship.runtimes.runner import Unavailable

    images = check_images(loaded)
    runner = _runner(fmt, path, loaded)
    try:
        try:
            runner.open()
            got = runner.predict(images)
        except Unavailable:
            raise
        except Exception as e:  # any runtime's own exception: the file does not open or run
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            return f"{runner.runtime} cannot open or run it ({reason})"
    finally:
        runner.close()
        if fmt is Format.COREML:  # loading the program used coremltools' builder: leave it as a fresh process has it
            from edgeship.export.reproducible import fresh_mil_names

            fresh_mil_names()
    ref = reference_outputs(loaded) if reference is None else reference
    if got.shape != ref.shape:
        return f"its output has shape {got.shape[1:]}, the Keras model's {ref.shape[1:]}"
    if not np.isfinite(got).all():
        return f"its outputs are not finite ({int(np.size(got) - np.isfinite(got).sum())} of {got.size} NaN or infinite)"
    kind = OutputKind(loaded.spec.output_kind or OutputKind.LOGITS)
    gate = float_gate(fmt, precision, kind, qat=bool(loaded.spec.qat))
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    # float32 rounding grows with the values: on noise, logits of a large scale differ by more than 1e-4 in a
    # faithful file; the limit is the policy's for outputs up to 1 (probabilities) and scales with larger ones.
    limit = gate.get("max_abs_error", 0.0) * max(1.0, float(np.max(np.abs(ref))))
    if "max_abs_error" in gate and not err <= limit:
        return f"its outputs differ from the Keras model's by up to {err:.3g} (limit {limit:.3g})"
    if "max_relative_error" in gate:
        from edgeship.validate.metrics import relative_error

        rel = relative_error(err, float(ref.min()), float(ref.max()))
        if not rel <= gate["max_relative_error"]:
            return (f"its outputs differ from the Keras model's by up to {err:.3g}, {rel:.3g} of their range "
                    f"(limit {gate['max_relative_error']:g})")
    if "sqnr_db" in gate:
        from edgeship.validate.metrics import sqnr_db

        sqnr = sqnr_db(ref, got)
        if not (sqnr is not None and sqnr >= gate["sqnr_db"]):
            return f"its outputs are {sqnr:.1f} dB from the Keras model's (at least {gate['sqnr_db']:g} dB)"
    if "top1_agreement" in gate:
        confident = _confident(ref, kind) if gate["top1_agreement"] < 1 else np.ones(len(ref), bool)
        flips = int(np.sum((got.argmax(1) != ref.argmax(1)) & confident))
        if flips:
            return f"its top-1 class differs from the Keras model's on {flips} of {CHECK_IMAGES} check images"
    if "cosine_min" in gate:
        cos = np.sum(got * ref, 1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
        if not float(cos.min()) >= gate["cosine_min"]:
            return f"its outputs' cosine to the Keras model's is {float(cos.min()):.6f} (limit {gate['cosine_min']:g})"
    return None


def _confident(ref: np.ndarray, kind: OutputKind) -> np.ndarray:
    """The samples whose reference top-1 margin reaches the policy's ``confident_margin``."""
    p = ref.astype(np.float64)
    if kind is not OutputKind.PROBABILITIES:
        p = np.exp(p - p.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.concatenate([np.zeros_like(p), p], 1)
    return (top2[:, 1] - top2[:, 0]) >= float(_policy().get("confidence", {}).get("confident_margin", 0.3))


def check_float_file(fmt: Format, precision: Precision, path: Path, name: str, loaded: LoadedModel,
                     reference: np.ndarray | None = None) -> str | None:
    """Raise :class:`ConversionError` naming ``name`` when the file at ``path`` fails its check. Returns a warning
    when the file cannot be run here at all (an op the Core ML reference executor has no kernel for: the validate
    stage reports such a file as skipped too), else None."""
    from edgeship.runtimes.runner import Unavailable

    try:
        what = problem(fmt, precision, path, loaded, reference)
    except Unavailable as e:
        return f"{name} was not checked after export: {e}"
    if what is not None:
        raise ConversionError(f"{name}: the exported {fmt} {precision} file is broken, not recorded: {what}")
    return None
