"""ONNX Runtime on the CPU. The client's view comes from the file: ``metadata_props`` (preprocessing, labels,
input layout) and, for a QDQ model with a quantised input, the input's QuantizeLinear parameters."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgeship.errors import UserError
from edgeship.models.spec import Preprocessing
from edgeship.types import Layout, Precision
from edgeship.runtimes.runner import InputInfo, Quantization, Runner

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(float16)": np.float16}


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    optimization_level = "all"  # "disable" | "basic" | "extended" | "all"

    def _open(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization_level]
        try:
            # From the file's bytes, not its path: the bytes read are the ones run (no external data is followed:
            # edgeship.validate.artifacts refuses it), and a path that is not valid UTF-8 opens too (ORT's path
            # argument refused it, printing its "EP Error" banner)
            self._sess = ort.InferenceSession(self.path.read_bytes(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise UserError(f"ONNX Runtime cannot open {self.path.name}: {str(e).splitlines()[0][:200]}") from None
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise UserError(f"{self.path.name} has {len(ins)} inputs and {len(outs)} outputs; edgeship validates "
                            "one image input and one class output")
        self._input, self._output = ins[0], outs[0].name
        props = self._sess.get_modelmeta().custom_metadata_map
        if "preprocessing" in props:
            self.preprocessing = Preprocessing.from_dict(json.loads(props["preprocessing"]))
        if "labels" in props:
            self.labels = list(json.loads(props["labels"]))
        shape = self._input.shape
        nchw = props.get("input_layout") == "nchw" or (len(shape) == 4 and shape[1] == 3 and shape[3] != 3)
        self.layout = Layout.NCHW if nchw else Layout.NHWC
        if self.preprocessing.layout is Layout.NCHW:  # metadata describes the Keras model, always NHWC
            self.preprocessing = Preprocessing(self.preprocessing.mean, self.preprocessing.std,
                                               self.preprocessing.color, Layout.NHWC)
        self._input_quant: Quantization | None = None
        if self._input.type in ("tensor(uint8)", "tensor(int8)") or outs[0].type in ("tensor(uint8)", "tensor(int8)"):
            self._input_quant, self.output_quant = _io_quantization(self.path, self._input.name, self._output)

    def inputs(self) -> list[InputInfo]:
        dtype = _ORT_TYPES.get(self._input.type)
        if dtype is None:
            raise UserError(f"{self.path.name}: input type {self._input.type} is not an image tensor type")
        shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        q = self._input_quant
        return [InputInfo(self._input.name, shape, np.dtype(dtype), q.scale if q else None, q.zero_point if q else None)]

    def _bind(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = feed

    def _run(self) -> None:
        self._result = self._sess.run([self._output], self._feed)[0]

    def _fetch(self) -> np.ndarray:
        return self._result

    def close(self) -> None:
        self._sess = None


class OnnxRuntimeUnfusedRunner(OnnxRuntimeRunner):
    """The same .onnx with ORT's graph optimisations off (``ORT_DISABLE_ALL``): each DequantizeLinear -> float op ->
    QuantizeLinear runs as written, in float, instead of ORT's fused int8 kernels (QLinearConv, QGemm): a second
    kernel path whose arithmetic does not depend on the CPU's 8-bit instructions."""

    runtime = "onnxruntime-unfused"
    optimization_level = "disable"


def _io_quantization(path, input_name: str, output_name: str) -> tuple[Quantization | None, Quantization | None]:
    """An 8-bit QDQ model's I/O parameters, as a client reads them: the scale and zero point of the
    DequantizeLinear that consumes the input and of the QuantizeLinear that produces the output."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def params(node) -> Quantization | None:
        scale, zp = init.get(node.input[1]), init.get(node.input[2]) if len(node.input) > 2 else 0
        if scale is None or np.size(scale) != 1:
            return None
        return Quantization(float(np.asarray(scale).reshape(())), int(np.asarray(zp).reshape(())))

    # Ops that move 8-bit values without changing them (a NHWC input's Transpose to NCHW, the stem's zero-point
    # Pad and SpaceToDepth, a final Flatten) may sit between the I/O tensor and its DequantizeLinear/QuantizeLinear.
    moves = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Pad", "SpaceToDepth"}
    name, inp = input_name, None
    for _ in range(len(graph.node)):
        consumers = [n for n in graph.node if name in n.input]
        inp = next((params(n) for n in consumers if n.op_type == "DequantizeLinear" and n.input[0] == name), None)
        if inp is not None or len(consumers) != 1 or consumers[0].op_type not in moves:
            break
        name = consumers[0].output[0]
    name, out = output_name, None
    for _ in range(len(graph.node)):
        producer = next((n for n in graph.node if name in n.output), None)
        if producer is None or producer.op_type == "QuantizeLinear":
            out = params(producer) if producer is not None else None
            break
        if producer.op_type not in moves:
            break
        name = producer.input[0]
    return inp, out


def guess_precision(path: Any) -> Precision:
    """For an .onnx no manifest records: int8 if it quantises (QuantizeLinear, QLinearConv), else fp32."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return Precision.FP32
    return Precision.INT8 if any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in graph.node) else Precision.FP32
