"""The float reference: the trained Keras model, fed the preprocessing the artifacts were made with."""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from edgeship.models.loading import LoadedModel
from edgeship.runtimes.runner import InputInfo, Runner


#: One traced inference function per Keras model and input shape for the process (see :func:`traced`)
_TRACED: "weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Callable[[Any], Any]]]" = weakref.WeakKeyDictionary()


def traced(model: Any, shape: tuple[int, ...]) -> Callable[[Any], Any]:
    """``model(x, training=False)`` as a ``tf.function`` on float32 batches of any size, ``shape`` (H, W, C) the
    image shape: traced once per model and shape for the process and shared by every user (the reference runner,
    the preprocessing inference), instead of once per validation (tracing costs 1-2 s on the demo, more on a
    224-pixel MobileNet). The function holds the model weakly: the cache entry goes with the model."""
    per_model = _TRACED.setdefault(model, {})
    fn = per_model.get(shape)
    if fn is None:
        from edgeship._tf import tf

        t = tf()
        ref = weakref.ref(model)
        # A traced function, not model.predict: no per-call Keras overhead, the same graph every batch size.
        fn = t.function(lambda x: ref()(x, training=False), reduce_retracing=True,  # type: ignore[misc]
                        input_signature=[t.TensorSpec((None, *shape), t.float32)])
        per_model[shape] = fn
    return fn


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
        self._fn = traced(self.loaded.keras_model, tuple(self.loaded.spec.input_shape))

    def inputs(self) -> list[InputInfo]:
        return [InputInfo("image", (None, *self.loaded.spec.input_shape), np.dtype(np.float32))]

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        self._x = feed["image"]

    def _run(self) -> None:
        self._out = self._fn(self._x).numpy()

    def _fetch(self) -> np.ndarray:
        assert self._out is not None
        return self._out
