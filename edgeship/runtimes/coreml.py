"""Core ML through ``MLModel.predict``: macOS only. Elsewhere the runner is unavailable, and the artifact is
reported as skipped with the reason, never as passed."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from edgeship.models.spec import Preprocessing
from edgeship.runtimes.runner import InputInfo, Runner, Unavailable, image_input_pixels

COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")


class CoreMLRunner(Runner):
    runtime = "coreml"
    compute_units = "cpu_only"
    _model: Any
    _input: str
    _size: tuple[int, int]
    _probs: str

    def _open(self) -> None:
        if sys.platform != "darwin":
            raise Unavailable("Core ML prediction needs macOS (coremltools cannot run predictions on "
                              f"{sys.platform})")
        from edgeship._tf import import_quietly

        ct = import_quietly("coremltools")
        units = getattr(ct.ComputeUnit, self.compute_units.upper())
        self._model = ct.models.MLModel(str(self.path), compute_units=units)
        spec = self._model.get_spec()
        meta = spec.description.metadata.userDefined
        if "edgeship.preprocessing" in meta:
            self.preprocessing = Preprocessing.from_dict(json.loads(meta["edgeship.preprocessing"]))
        from edgeship.metadata.coreml import classifier_labels

        self.labels = classifier_labels(spec) or None
        image = spec.description.input[0]
        self._input = image.name
        self._size = (image.type.imageType.height, image.type.imageType.width)
        # a classifier's class-score dictionary; else (an embedding, a regression) the first MultiArray output
        self._probs = spec.description.predictedProbabilitiesName or spec.description.output[0].name

    def inputs(self) -> list[InputInfo]:
        h, w = self._size
        return [InputInfo(self._input, (1, h, w, 3), np.dtype(np.uint8))]

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        # The image input applies the model's own scale/bias: a client hands over 8-bit pixels, as here.
        self.input_feed, pixels = image_input_pixels(images)
        return {self._input: pixels}

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        from PIL import Image

        self._image = Image.fromarray(feed[self._input][0])

    def _run(self) -> None:
        self._result = self._model.predict({self._input: self._image})

    def _fetch(self) -> np.ndarray:
        probs = self._result[self._probs]
        if not isinstance(probs, dict):
            return np.asarray(probs, dtype=np.float32).reshape(1, -1)
        labels = self.labels or list(probs)
        return np.asarray([[probs[label] for label in labels]], dtype=np.float32)
