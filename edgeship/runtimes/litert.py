"""LiteRT (``ai_edge_litert``), the maintained TFLite runtime; XNNPACK by default, reference kernels on request.

The client's view comes from the file itself: normalisation, colour space and labels from its TFLite metadata
(what MediaPipe reads), input/output scale and zero point from the tensors.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgeship.errors import UserError
from edgeship.types import ColorOrder, Precision
from edgeship.runtimes.runner import InputInfo, Quantization, Runner


class LiteRTRunner(Runner):
    runtime = "litert"
    reference_kernels = False

    def _open(self) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        data = self.path.read_bytes()
        kwargs: dict[str, Any] = {"num_threads": self.threads}
        if self.reference_kernels:
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_REF
        from edgeship._tf import silenced

        try:
            with silenced((2,)):  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every interpreter
                self._interp = Interpreter(model_path=str(self.path), **kwargs)  # mmapped, as clients load it
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"LiteRT cannot open {self.path.name}: {str(e).splitlines()[0][:200]}") from None
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        if len(self._in) != 1 or len(self._out) != 1:
            raise UserError(f"{self.path.name} has {len(self._in)} inputs and {len(self._out)} outputs; edgeship "
                            "validates one image input and one class output")
        scale, zp = self._out[0]["quantization"]
        if self._out[0]["dtype"] in (np.int8, np.uint8) and scale:
            self.output_quant = Quantization(float(scale), int(zp))
        self._use_metadata(data)

    def _use_metadata(self, data: bytes) -> None:
        from edgeship.metadata.tflite import read_metadata

        try:
            meta = read_metadata(data)
        except UserError:
            return  # a .tflite without metadata: the manifest's preprocessing is all a client would have
        norm = meta["input"].get("normalization")
        pre = self.preprocessing
        if norm:
            pre = replace(pre, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        if meta["input"].get("color_space") == "RGB":
            pre = replace(pre, color=ColorOrder.RGB)
        self.preprocessing = pre
        self.labels = list(meta.get("labels") or []) or None

    def inputs(self) -> list[InputInfo]:
        d = self._in[0]
        scale, zp = d["quantization"]
        shape = tuple(int(s) for s in d["shape"])
        return [InputInfo(d["name"], shape, np.dtype(d["dtype"]), float(scale) if scale else None,
                          int(zp) if scale else None)]

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        self._interp.set_tensor(self._in[0]["index"], next(iter(feed.values())))

    def _run(self) -> None:
        self._interp.invoke()

    def _fetch(self) -> np.ndarray:
        return self._interp.get_tensor(self._out[0]["index"]).copy()

    def close(self) -> None:
        self._interp = None


class LiteRTReferenceRunner(LiteRTRunner):
    """The same .tflite through LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``: plain int32 loops, no
    XNNPACK, no SIMD): a second kernel path that no CPU's instruction set can change."""

    runtime = "litert-reference"
    reference_kernels = True


def guess_precision(path: Any) -> Precision:
    """For a .tflite no manifest records: int8 if its tensors are 8-bit, fp16 if its weights are fp16."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    except Exception:
        return Precision.FP32  # unreadable: the runner will fail it with the reason
    types = {t.type for g in model.subgraphs for t in g.tensors}
    if types & {schema.TensorType.INT8, schema.TensorType.UINT8}:
        return Precision.INT8
    return Precision.FP16 if schema.TensorType.FLOAT16 in types else Precision.FP32
