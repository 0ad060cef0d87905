"""The one calibration set every format is quantised from.

DATA is a folder of images (recursive; any sub-folders, whose names are not read: no labels are needed), an ``.npy``/``.npz`` array, or the demo's
calibration set. Images go through the one resize policy of :mod:`edgeship.data` and the model's
:class:`~edgeship.models.spec.Preprocessing`. ``num_samples`` are picked deterministically with ``seed``; the
set's hash goes into every recipe, so a quantised file can be traced to the exact images it was calibrated on.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeship.data import ArraySource, FolderSource, open_data
from edgeship.errors import UserError
from edgeship.models.loading import DEMO_DIR
from edgeship.models.spec import ModelSpec

DEMO_CALIBRATION = DEMO_DIR / "calibration"


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    inputs: np.ndarray  # (N, H, W, 3) float32, preprocessed
    source: str
    sha256: str
    conversions: dict[str, int] | None = None  # the decoder's conversions (edgeship.data), per name

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": int(len(self.images)), "sha256": self.sha256,
                "input_conversions": dict(self.conversions or {})}


def open_calibration(data: str | Path | None, spec: ModelSpec, num_samples: int = 200,
                     input_range: "str | tuple[float, float] | None" = None,
                     resize: str = "stretch", default: Path | None = DEMO_CALIBRATION) -> ArraySource | FolderSource:
    """The calibration set ``data`` (default: ``default``, the demo's) at ``spec``'s input size, opened but not decoded: a
    missing path, a mixed layout or ``num_samples`` < 1 raise :class:`UserError` here, before any slow work.
    Calibration needs images only: folder names (classes, batch_01/...) and stored labels are not read. ``resize``:
    how images of another size or aspect are fitted (:func:`edgeship.data.fit`). ``default``: the set when ``data``
    is None (None: refused; :func:`edgeship.models.loading.demo_default` keeps the demo's for the demo only)."""
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    return open_data(data, spec.input_shape[:2], spec.labels, default=default, input_range=input_range,
                     use_labels=False, resize=resize, option="--calibration")  # type: ignore[return-value]


def load_calibration(data: str | Path | None, spec: ModelSpec, num_samples: int = 200, seed: int = 0,
                     warn=lambda msg: print(f"edgeship: warning: {msg}", file=sys.stderr),
                     input_range: "str | tuple[float, float] | None" = None,
                     resize: str = "stretch", default: Path | None = DEMO_CALIBRATION) -> CalibrationSet:
    """``input_range``: how an array's values map to pixels (:func:`edgeship.data.open_data`); ``resize``: how
    images of another size or aspect are fitted; ``default``: :func:`open_calibration`'s. Raises
    :class:`UserError` (:func:`open_calibration`'s)."""
    source = open_calibration(data, spec, num_samples, input_range, resize, default)
    rng = np.random.default_rng(seed)
    count = source.count
    if count < num_samples:
        warn(f"{count} calibration samples in {source.source}, fewer than the {num_samples} asked: using all")
    pick = np.sort(rng.permutation(count)[: min(num_samples, count)])
    if isinstance(source, FolderSource):
        decoded = []
        for i in pick:
            try:
                decoded.append(source.read(int(i)))
            except UserError as e:  # one bad file should not stop a release: skip it, say so
                warn(f"skipping {e}")
        if not decoded:
            raise UserError(f"no decodable calibration images in {source.source}")
        images = np.stack(decoded)
    elif isinstance(source, ArraySource):
        chunk = source.take(pick)
        images = chunk if chunk.dtype == np.uint8 else np.clip(np.round(chunk), 0, 255).astype(np.uint8)
    else:  # pragma: no cover - open_data returns one of the two
        raise UserError(f"unsupported calibration source {source.source}")
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    return CalibrationSet(images, spec.preprocessing.apply(images), source.source, digest,
                          dict(sorted(source.conversions.items())))
