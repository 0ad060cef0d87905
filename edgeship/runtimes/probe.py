"""The LiteRT probe: a .tflite opened in-process to measure inside it, not to validate it. One sample at a time,
with every intermediate tensor kept (``preserve_tensors``, LiteRT's debugging mode) so any tensor can be read by
name after a run. The quantise stage's measurements (per-layer SQNR, range histograms, int8 bias correction, the
float fallback's outputs) stand on it instead of opening ``ai_edge_litert`` themselves.

The validator's timed, feed-checked runs are :class:`edgeship.runtimes.runner.Runner`'s; this probe has no
timing and no feed policy: it is given the tensor the graph's input wants.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


class LiteRTProbe:
    """``model`` (flatbuffer bytes) in a LiteRT interpreter. ``preserve_tensors``: keep every intermediate
    tensor readable after :meth:`run` (False: LiteRT's ordinary interpreter, delegate and all, for outputs only).
    ``input``/``output``: the first input's and output's details; ``tensors``: every tensor's details;
    ``index``: {tensor name: index}."""

    def __init__(self, model: bytes, preserve_tensors: bool = True) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from edgeship._tf import silenced

        with silenced((2,)), warnings.catch_warnings():  # LiteRT announces its XNNPACK delegate on stderr
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")  # debugging use: ours
            self._interp = (Interpreter(model_content=model, experimental_preserve_all_tensors=True)
                            if preserve_tensors else Interpreter(model_content=model))
            self._interp.allocate_tensors()
        self.input: dict[str, Any] = self._interp.get_input_details()[0]
        self.output: dict[str, Any] = self._interp.get_output_details()[0]
        self.tensors: list[dict[str, Any]] = self._interp.get_tensor_details()
        self.index: dict[str, int] = {d["name"]: d["index"] for d in self.tensors}

    def run(self, x: np.ndarray) -> None:
        """One inference on ``x``, the input tensor as the graph wants it (dtype and shape)."""
        self._interp.set_tensor(self.input["index"], x)
        self._interp.invoke()

    def tensor(self, index: int) -> np.ndarray:
        """Tensor ``index`` (a copy) after the last :meth:`run`."""
        return self._interp.get_tensor(index)

    def op_outputs(self) -> set[int]:
        """The indices of the tensors an op computes (not weights, not constants)."""
        ops = self._interp._get_ops_details()  # noqa: SLF001 - the only way to know which tensors are op outputs
        return {int(i) for op in ops for i in op["outputs"]}
