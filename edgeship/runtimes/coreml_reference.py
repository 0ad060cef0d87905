"""Core ML where Core ML cannot run (Linux, Windows): the saved ML Program executed op by op with NumPy
(:mod:`edgeship.runtimes.mlprogram`). A reference execution of the program's semantics, fp16 rounding included,
not Apple's kernels: the report says so (runtime ``coreml-reference``, and :data:`NOTE`).

It is fed as a Core ML client feeds the model, like :class:`~edgeship.runtimes.coreml.CoreMLRunner`:
uint8 RGB pixels (the image input applies the model's own scale/bias), one image per call when timed; the answer is the
classifier's ``{label: value}`` dictionary in label order. A program with an op the executor has no kernel for
is *unavailable* here (reported as skipped, with the op named), never answered without it.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np

from edgeship.errors import UserError
from edgeship.models.spec import Preprocessing
from edgeship.runtimes.runner import InputInfo, Runner, Unavailable, image_input_pixels

NOTE = "reference execution (NumPy), not Apple's kernels"
BATCH = 16  # images per executor call in accuracy runs


class CoreMLReferenceRunner(Runner):
    runtime = "coreml-reference"
    note = NOTE

    def _open(self) -> None:
        from edgeship.runtimes.mlprogram import MLProgram, UnsupportedOp

        try:
            self._program = MLProgram(self.path)
        except UnsupportedOp as e:
            raise Unavailable(f"{self.runtime} cannot run it: {e}") from None
        program = self._program
        meta = program.spec.description.metadata.userDefined
        if "edgeship.preprocessing" in meta:
            self.preprocessing = Preprocessing.from_dict(json.loads(meta["edgeship.preprocessing"]))
        # a classifier answers {label: value} in its own label order; a program without one (an embedding, a
        # regression) answers its first output as it is
        self.labels = None if program.labels is None else [str(label) for label in program.labels]
        images = [d for d in program.inputs if d.image is not None]
        if len(program.inputs) != 1 or not images:
            raise UserError(f"{self.path.name} has inputs {[d.name for d in program.inputs]}; edgeship validates "
                            "one image input")
        self._input = images[0]
        assert self._input.image is not None
        self._size = (self._input.image.height, self._input.image.width)
        self._limit = _blas_threads(self.threads)

    def inputs(self) -> list[InputInfo]:
        h, w = self._size
        # A client feeds one image per call (latency is timed so); accuracy runs feed a chunk, which the
        # executor runs as one batch when the program allows it (MLProgram.execute_many), image by image if not.
        return [InputInfo(self._input.name, (None, h, w, 3), np.dtype(np.uint8))]

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        # The image input applies the model's own scale/bias: a client hands over 8-bit pixels, as here.
        self.input_feed, pixels = image_input_pixels(images)
        return {self._input.name: pixels}

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = feed

    def _run(self) -> None:
        with self._limit():
            self._result = [values for _, _, values in self._program.execute_many(self._feed[self._input.name], BATCH)]

    def _fetch(self) -> np.ndarray:
        return np.concatenate([self._program.output_array(values) for values in self._result])


def _blas_threads(threads: int) -> Any:
    """A context manager holding NumPy's BLAS to ``threads`` (through threadpoolctl, when installed)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=max(1, threads), user_api="blas")
