"""One interface for every runtime (Keras, LiteRT, ONNX Runtime, Core ML).

A runner opens an artifact, describes its inputs, and answers ``infer(feed) -> outputs``, timing only the
inference call. The base class checks the feed's names, dtypes and shapes once, so every runtime gives the same
well-worded input error; a subclass implements only the backend calls.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edgeship.errors import UserError


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: np.dtype
    scale: float | None = None  # quantised inputs: real = scale * (q - zero_point)
    zero_point: int | None = None


class Runner(ABC):
    """Subclasses set ``name`` and implement :meth:`_open`, :meth:`inputs` and :meth:`_infer`."""

    name: str = "runner"

    def __init__(self) -> None:
        self.last_inference_s: float | None = None

    def open(self) -> "Runner":
        self._open()
        return self

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def inputs(self) -> list[InputInfo]: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feed(feed)
        start = time.perf_counter()
        out = self._infer(feed)
        self.last_inference_s = time.perf_counter() - start
        return out

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        expected = {i.name: i for i in self.inputs()}
        if set(feed) != set(expected):
            raise UserError(f"{self.name}: feed has inputs {sorted(feed)}, the artifact expects {sorted(expected)}")
        for name, arr in feed.items():
            info = expected[name]
            if arr.dtype != info.dtype:
                raise UserError(f"{self.name}: input '{name}' is {arr.dtype}, the artifact expects {info.dtype}")
            if len(arr.shape) != len(info.shape) or any(
                want is not None and got != want for got, want in zip(arr.shape, info.shape)
            ):
                shape = tuple("?" if d is None else d for d in info.shape)
                raise UserError(f"{self.name}: input '{name}' has shape {arr.shape}, the artifact expects {shape}")
