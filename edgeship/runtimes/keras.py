"""The float reference: the trained Keras model, fed the preprocessing the artifacts were made with."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeship.models.loading import LoadedModel
from edgeship.runtimes.runner import InputInfo, Runner


class KerasRunner(Runner):
    runtime = "keras"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        super().__init__(loaded.source_path, loaded.spec.preprocessing, threads)
        self.loaded = loaded
        self.labels = list(loaded.spec.labels)
        self._fn: Any = None
        self._x: np.ndarray | None = None
        self._out: np.ndarray | None = None

    def _open(self) -> None:
        from edgeship._tf import tf

        t = tf()
        model = self.loaded.keras_model
        h, w, c = self.loaded.spec.input_shape
        # A traced function, not model.predict: no per-call Keras overhead, the same graph every batch size.
        self._fn = t.function(lambda x: model(x, training=False), reduce_retracing=True,
                              input_signature=[t.TensorSpec((None, h, w, c), t.float32)])

    def inputs(self) -> list[InputInfo]:
        return [InputInfo("image", (None, *self.loaded.spec.input_shape), np.dtype(np.float32))]

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        self._x = feed["image"]

    def _run(self) -> None:
        self._out = self._fn(self._x).numpy()

    def _fetch(self) -> np.ndarray:
        assert self._out is not None
        return self._out
