"""One interface for every runtime (Keras, LiteRT, ONNX Runtime, Core ML).

A runner opens an artifact, describes its inputs, and answers ``infer(feed) -> outputs``, timing only the backend's
own inference call (``_run``), never the feed's preparation. The base class checks the feed's names, dtypes and
shapes, so every runtime gives the same well-worded input error, and it feeds the artifact the way a client would
(:meth:`predict`): the artifact's preprocessing and layout, and for uint8/int8 inputs the artifact's own scale and
zero point; quantised outputs are dequantised. A subclass implements only the backend calls.

What a uint8 input is fed depends on what the data are (:meth:`Runner.feed`, policy as data in
:data:`INPUT_FEEDS`):

- raw images (uint8 pixels: image folders, ``.npy`` of uint8): the pixels themselves, as MediaPipe Tasks feeds a
  uint8 input (``image_preprocessing_graph.cc``: ``output_tensor_uint_range`` [0, 255], NormalizationOptions
  unused), so the file's own scale and zero point decide what a pixel means, as on the phone;
- float pixels (``.npy`` of float32, 0-255 not rounded): normalised, then quantised with the file's scale and zero
  point, the only way a client holding floats can feed it ("re-quantised floats").

An int8 input is always fed re-quantised floats (MediaPipe refuses int8 input; no client feeds it pixels), a float
input the normalised floats. With MobileNet's mean 127.5 and the uint8 zero point 127 the two feeds differ by half a
step on every pixel (:mod:`edgeship.quantize.techniques.raw_input` compensates it in the file).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeship.errors import UserError
from edgeship.numerics import quantize_values
from edgeship.models.spec import Preprocessing
from edgeship.types import ColorOrder, Layout


#: What each feed is called in reports (``ArtifactResult.input_feed``).
FEED_RAW = "raw uint8 pixels (as MediaPipe)"
FEED_REQUANTISED = "re-quantised floats"
FEED_FLOAT = "normalised floats"
INPUT_FEEDS = {
    FEED_RAW: "uint8 input, uint8 data: the pixels as they are; the file's scale and zero point give their meaning",
    FEED_REQUANTISED: "8-bit input, float data (or int8 input): normalised, then round(x / scale + zero point)",
    FEED_FLOAT: "float input: (pixel - mean) / std",
}


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: np.dtype
    scale: float | None = None  # quantised inputs: real = scale * (q - zero_point)
    zero_point: int | None = None


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int


class Runner(ABC):
    """Subclasses set ``runtime`` and implement ``_open``, ``inputs``, ``_bind``, ``_run`` and ``_fetch``.

    After ``open()``: ``preprocessing`` (what a client of this artifact applies, from the artifact's own metadata
    where it has some), ``labels`` (the artifact's own label list, or None), ``layout`` and ``output_quant``.
    """

    runtime: str = "runner"

    def __init__(self, path: Path | str, preprocessing: Preprocessing, threads: int = 1) -> None:
        self.path = Path(path)
        self.preprocessing = preprocessing
        self.threads = threads
        self.labels: list[str] | None = None
        self.layout = Layout.NHWC
        self.output_quant: Quantization | None = None
        self.load_ms: float | None = None
        self.last_run_s: float | None = None
        self.input_feed: str | None = None  # what the last feed() gave the artifact (FEED_* or a runner's own)

    # -- backend hooks ------------------------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def inputs(self) -> list[InputInfo]: ...

    @abstractmethod
    def _bind(self, feed: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def _run(self) -> None: ...

    @abstractmethod
    def _fetch(self) -> np.ndarray: ...

    # -- the interface --------------------------------------------------------------------------------------------
    def open(self) -> "Runner":
        start = time.perf_counter()
        self._open()
        self.load_ms = (time.perf_counter() - start) * 1e3
        return self

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Run one feed; only the backend's inference call is timed (``last_run_s``)."""
        self.check_feed(feed)
        self._bind(feed)
        start = time.perf_counter()
        self._run()
        self.last_run_s = time.perf_counter() - start
        return self._fetch()

    def time_runs(self, feed: dict[str, np.ndarray], warmup: int, iterations: int) -> list[float]:
        """Seconds per inference, the feed bound once: what the backend itself takes, as a bare
        ``invoke()``/``run()`` loop would measure it (re-binding an identical feed would time the copy too)."""
        self.check_feed(feed)
        self._bind(feed)
        for _ in range(warmup):
            self._run()
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            self._run()
            times.append(time.perf_counter() - start)
        self._fetch()
        return times

    @property
    def batch_size(self) -> int | None:
        """The fixed batch size of the artifact's input, or None when the batch is dynamic."""
        return self.inputs()[0].shape[0]

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """RGB images (N, H, W, 3), uint8 pixels or float pixels in 0-255 -> the feed a client of this artifact
        would build (see the module docstring); ``input_feed`` says which it was. uint8 pixels into a uint8 input go
        in as they are (colour order and layout still the artifact's); anything else is normalised, and for an
        8-bit input quantised with the artifact's own scale and zero point."""
        (info,) = self.inputs()
        if info.dtype == np.uint8 and images.dtype == np.uint8:
            x = images[..., ::-1] if self.preprocessing.color is ColorOrder.BGR else images
            if self.layout is Layout.NCHW:
                x = np.transpose(x, (0, 3, 1, 2))
            self.input_feed = FEED_RAW
            return {info.name: np.ascontiguousarray(x, dtype=np.uint8)}
        x = self.preprocessing.apply(images)
        if self.layout is Layout.NCHW and self.preprocessing.layout is Layout.NHWC:
            x = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
        self.input_feed = FEED_FLOAT
        if info.dtype in (np.uint8, np.int8):
            if info.scale is None or info.zero_point is None:
                raise UserError(f"{self.path.name}: quantised input '{info.name}' has no scale/zero point")
            x = quantize_values(x, info.dtype, info.scale, info.zero_point)
            self.input_feed = FEED_REQUANTISED
        return {info.name: x.astype(info.dtype, copy=False)}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Float outputs (N, classes) for RGB images (uint8 or float pixels), batch by batch as the artifact
        allows."""
        step = self.batch_size or len(images)
        outs = [self.infer(self.feed(images[i : i + step])) for i in range(0, len(images), step)]
        out = np.concatenate(outs).astype(np.float32)
        if self.output_quant is not None:
            out = (out - self.output_quant.zero_point) * self.output_quant.scale
        return out.reshape(len(images), -1)

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        expected = {i.name: i for i in self.inputs()}
        if set(feed) != set(expected):
            raise UserError(f"{self.path.name}: feed has inputs {sorted(feed)}, the artifact expects {sorted(expected)}")
        for name, arr in feed.items():
            info = expected[name]
            if arr.dtype != info.dtype:
                raise UserError(f"{self.path.name}: input '{name}' is {arr.dtype}, the artifact expects {info.dtype}")
            if len(arr.shape) != len(info.shape) or any(
                want is not None and got != want for got, want in zip(arr.shape[1:], info.shape[1:])
            ):
                shape = tuple("?" if d is None else d for d in info.shape)
                raise UserError(
                    f"{self.path.name}: input '{name}' has shape {tuple(arr.shape)}, the artifact expects {shape}"
                )

    def close(self) -> None:
        """Release the backend (interpreter, session). Subclasses with resources override."""


class Unavailable(Exception):
    """This runtime cannot run here (e.g. Core ML prediction off macOS): the artifact is reported as skipped."""


FEED_IMAGE = "uint8 pixels (Core ML image input)"
FEED_IMAGE_ROUNDED = "float pixels rounded to uint8 (Core ML image input)"
INPUT_FEEDS[FEED_IMAGE] = "an image input (Core ML ImageType) takes 8-bit pixels and applies its own scale and bias"
INPUT_FEEDS[FEED_IMAGE_ROUNDED] = "float data into an image input: the pixels rounded to 0-255 first"


def image_input_pixels(images: np.ndarray) -> tuple[str, np.ndarray]:
    """(feed name, uint8 pixels) for an image input (Core ML's ``ImageType``), which only takes 8-bit pixels: uint8
    images as they are; float pixels rounded (half to even) and clipped to 0-255."""
    if images.dtype == np.uint8:
        return FEED_IMAGE, np.ascontiguousarray(images)
    return FEED_IMAGE_ROUNDED, np.clip(np.round(images), 0, 255).astype(np.uint8)
