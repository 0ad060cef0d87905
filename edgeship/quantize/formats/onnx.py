"""The int8 ONNX: by default the int8 TFLite rewritten as a QDQ graph that ONNX Runtime fuses into int8 kernels
(:mod:`edgeship.quantize.formats.onnx_qdq`), so the two files compute with the same int8 parameters and answer alike.

Measured on the demo (uint8 I/O, 360 held-out images): 100 % of output values identical to LiteRT's (XNNPACK);
in ORT's optimised graph 52 QLinearConv, 1 QLinearGlobalAveragePool, 1 QGemm and the 10 residual adds in
XNNPACK's integer arithmetic (:mod:`edgeship.quantize.formats.onnx_qdq`), no float
Conv/MatMul/Gemm, no Clip. The path it replaces, ``tf2onnx.convert.from_tflite``, kept Clip nodes between
DequantizeLinear and QuantizeLinear (ORT ran it ~3x slower than LiteRT runs the .tflite) and agreed on 94.75 %;
it stays as ``converter="tf2onnx"`` and as the fallback for a TFLite op the rewrite does not know.

:func:`quantize_onnx_static` is the other route, for users who start from a float ONNX: ONNX Runtime's own
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, one DequantizeLinear per consumer).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeship.errors import ConversionError, UserError
from edgeship.export.common import ModelInfo
from edgeship.export.onnx import DEFAULT_OPSET, rename_output, set_metadata
from edgeship.models.loading import LoadedModel
from edgeship.quantize.common import Job, Made, portability_record
from edgeship.types import Format, Layout, Precision

__all__ = ["CONVERTERS", "onnx_from_tflite", "quantize_onnx_file", "quantize_onnx_static"]

CONVERTERS = ("qdq", "tf2onnx")


def quantize_onnx_file(job: Job, precision: Precision, tmp: Path) -> Made:
    """The stage's ONNX quantiser (:mod:`edgeship.quantize.common`): by default the run's int8 TFLite rewritten as
    QDQ (its parameters; its per-layer report holds for both); with ``job.onnx_method`` minmax/entropy/percentile,
    ONNX Runtime's ``quantize_static`` of the float ONNX (exported on the way when missing). Either is statically
    checked for portability (stored U8U8 where any kernel could saturate) before it is written."""
    if job.onnx_method != "tflite":  # ORT's own calibration of the float ONNX
        float_onnx = job.float_artifact(Format.ONNX)
        recipe = job.recipe(from_int8_tflite=False)
        quantize_onnx_static(float_onnx, job.cal.inputs, tmp, job.onnx_method)
        recipe["portability"] = portability_record(Format.ONNX, tmp.read_bytes())
        recipe["source"] = (f"onnxruntime.quantization.quantize_static of {float_onnx.name}: QDQ, per-channel int8 "
                            f"weights, uint8 activations, {job.onnx_method} calibration (ReLU6 outputs calibrated, "
                            "not fixed; not bit-exact to the .tflite)")
        return Made(recipe, {"input_dtype": "float32", "source": f"onnxruntime {job.onnx_method}", **job.options}, {})
    assert job.stats is not None
    # Rewritten from the very int8 TFLite shipped for Android: the same I/O type and parameters.
    fell_back: list[str] = []

    def warn(msg: str) -> None:
        fell_back.append(msg)
        job.warn(msg)

    data = onnx_from_tflite(job.stats.int8.model, job.loaded, job.info, warn=warn)
    recipe = job.recipe(from_int8_tflite=True)
    recipe["portability"] = portability_record(Format.ONNX, data)
    tmp.write_bytes(data)
    recipe["tensors"] = job.stats.int8.tensor_params
    # (the text names the rewrite's module as before quantize/formats/ existed: recipes stay byte-identical)
    recipe["source"] = (f"tf2onnx.convert.from_tflite of the int8 TFLite ({fell_back[0]})" if fell_back else
                        "the int8 TFLite rewritten op by op as ONNX QDQ (edgeship.quantize.onnx_qdq): its int8 "
                        "parameters, uint8 activations (zero point + 128), weights stored as uint8 with zero point "
                        "128 (U8U8, edgeship.quantize.portability), NCHW inside")
    return Made(recipe, {"input_dtype": job.ranges["io_dtype"], "layout": "nhwc", **job.options},
                job.stats.layer_sqnr)


def onnx_from_tflite(tflite: bytes, loaded: LoadedModel, info: ModelInfo, opset: int = DEFAULT_OPSET, *,
                     layout: Layout = Layout.NHWC, converter: str = "qdq", portable: bool = True,
                     warn: Callable[[str], None] | None = None) -> bytes:
    """The int8 ONNX of the int8 TFLite ``tflite``: same I/O type (uint8, int8 or float32), same parameters.

    ``converter="qdq"`` (default): the direct QDQ rewrite, ``layout`` NHWC (as the .tflite; ORT's NHWC transform
    then needs no Transpose at all) or NCHW. A TFLite op the rewrite does not handle falls back to tf2onnx, with a
    warning through ``warn``. ``converter="tf2onnx"``: ``tf2onnx.convert.from_tflite`` (NHWC only, slow in ORT).
    The file carries edgeship's ``metadata_props`` and passes ``onnx.checker`` (full check).

    ``portable`` (default): weights that some ORT kernel path could saturate on are stored U8U8
    (:func:`edgeship.quantize.portability.portable_onnx`), the same numbers; ``False`` keeps the TFLite's int8
    weights as they are (uint8 x int8: wrong on x86 AVX2 without VNNI; for measurements and tests only)."""
    from edgeship._tf import import_quietly

    onnx = import_quietly("onnx")
    if converter not in CONVERTERS:
        raise UserError(f"unknown int8 ONNX converter '{converter}': choose from {', '.join(CONVERTERS)}")
    proto = None
    if converter == "qdq":
        from edgeship.quantize.formats.onnx_qdq import UnsupportedTFLiteOp, qdq_from_tflite

        try:
            proto = qdq_from_tflite(tflite, input_name=loaded.spec.input_name, output_name=loaded.spec.output_tensor,
                                    layout=layout, opset=opset)
        except UnsupportedTFLiteOp as e:
            if layout is Layout.NCHW:
                raise UnsupportedTFLiteOp(f"{e}, and the tf2onnx fallback keeps the TFLite's NHWC input: ask for "
                                          "an NHWC int8 ONNX") from e
            if warn is not None:
                warn(f"{e}: the int8 ONNX falls back to tf2onnx's conversion (correct, but ONNX Runtime fuses "
                     "little of it into int8 kernels: slower)")
    if proto is None:
        if layout is Layout.NCHW:
            raise UserError("the tf2onnx int8 conversion keeps the TFLite's NHWC input; use the qdq converter for NCHW")
        proto = _tf2onnx_from_tflite(tflite, loaded, opset)
        layout = Layout.NHWC
    if portable:
        from edgeship.quantize.portability import portable_onnx

        portable_onnx(proto, "the int8 ONNX")
    set_metadata(proto, loaded, info, layout)
    from edgeship.export.reproducible import canonical_onnx

    canonical_onnx(proto)  # byte-identical reruns (edgeship.export.reproducible)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the int8 ONNX fails onnx.checker: {str(e).splitlines()[0][:200]}") from e
    return proto.SerializeToString()


def _tf2onnx_from_tflite(tflite: bytes, loaded: LoadedModel, opset: int) -> Any:
    from edgeship._tf import import_quietly, silenced

    tf2onnx = import_quietly("tf2onnx")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        try:
            with silenced():
                proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
        except Exception as e:  # tf2onnx raises many types
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ConversionError(f"onnx converter cannot convert the int8 TFLite: {first}") from e
    graph = proto.graph
    graph.input[0].name, old_in = loaded.spec.input_name, graph.input[0].name
    for node in graph.node:
        node.input[:] = [loaded.spec.input_name if i == old_in else i for i in node.input]
    rename_output(proto, loaded.spec.output_tensor)
    return proto


def quantize_onnx_static(float_onnx_path: str | Path, calibration_inputs: np.ndarray, out_path: str | Path,
                         method: str = "minmax", *, per_channel: bool = True, preprocess: bool = True,
                         percentile: float = 99.999) -> Path:
    """ONNX Runtime's post-training quantisation of a float ONNX, for users who start from one.

    ``calibration_inputs``: the preprocessed float32 batch (N, H, W, 3), as :class:`~edgeship.quantize.calibration.
    CalibrationSet.inputs` holds it; transposed to NCHW when the model's input is NCHW (its ``input_layout``
    metadata, or a 3 in the channel position). ``method``: "minmax", "entropy" or "percentile" (``percentile``
    sets the kept percentile). The result is QDQ with uint8 activations and symmetric int8 weights (per channel by
    default), one DequantizeLinear per consumer (ORT fuses only those), float32 I/O; the float model's
    ``metadata_props`` are kept. ``preprocess`` runs ``quant_pre_process`` (shape inference, graph optimisation)
    first. Returns ``out_path``.

    Unlike the default int8 ONNX (the int8 TFLite's own parameters), the ranges here are ORT's calibration of the
    ONNX: the ReLU6 outputs are calibrated, not fixed to [0, 6], and the file does not match the .tflite.
    Weights that an ORT kernel path could saturate on are stored U8U8, as in the default int8 ONNX."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    key = method.strip().lower()
    if key not in methods:
        raise UserError(f"unknown ONNX calibration method '{method}': choose from {', '.join(methods)}")
    src, out = Path(float_onnx_path), Path(out_path)
    if not src.is_file():
        raise UserError(f"float ONNX model not found: {src}")
    x = np.asarray(calibration_inputs)
    if x.ndim != 4 or len(x) == 0 or not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise UserError("calibration inputs must be a non-empty finite float (N, H, W, C) batch, got "
                        f"{x.shape} {x.dtype}")
    model = onnx.load(str(src))
    if len(model.graph.input) != 1:
        raise UserError(f"{src.name} has {len(model.graph.input)} inputs; one image input is expected")
    graph_in = model.graph.input[0]
    dims = [d.dim_value for d in graph_in.type.tensor_type.shape.dim]
    props = {p.key: p.value for p in model.metadata_props}
    nchw = props.get("input_layout") == "nchw" or (len(dims) == 4 and dims[1] == x.shape[3] and dims[3] != x.shape[3])
    if nchw:
        x = np.transpose(x, (0, 3, 1, 2))
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = graph_in.name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(x):
                return None
            self._i += 1
            return {name: x[self._i - 1 : self._i]}

        def rewind(self) -> None:
            self._i = 0

    extra: dict[str, Any] = {"DedicatedQDQPair": True, "ActivationSymmetric": False, "WeightSymmetric": True}
    if key == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        from edgeship._tf import silenced

        if preprocess:
            try:
                with silenced():  # ORT's quantisation tools print their progress
                    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
            except Exception as e:  # symbolic shape inference fails on some graphs; the plain model still quantises
                import warnings

                warnings.warn(f"quant_pre_process failed ({str(e).splitlines()[0][:120]}); quantising the model as is")
                prepared = src
        else:
            prepared = src
        try:
            with silenced():
                quantize_static(str(prepared), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=per_channel, calibrate_method=methods[key], extra_options=extra)
        except Exception as e:  # ORT raises many types
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ConversionError(f"onnxruntime quantize_static failed on {src.name}: {first}") from e
        quantised = onnx.load(str(Path(tmp) / "q.onnx"))
    del quantised.metadata_props[:]
    for key_, value in props.items():
        entry = quantised.metadata_props.add()
        entry.key, entry.value = key_, value
    from edgeship.quantize.portability import portable_onnx

    portable_onnx(quantised, f"the int8 ONNX of {src.name}")  # full-range int8 weights: stored U8U8
    onnx.checker.check_model(quantised, full_check=True)
    from edgeship.fileio import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as t:
        t.write_bytes(quantised.SerializeToString())
    return out
