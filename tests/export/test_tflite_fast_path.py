"""The TFLite conversion's fast path (the frozen concrete function, no SavedModel round trip; issue 28) gives
``from_keras_model``'s model: the same I/O tensor names and SignatureDef, the same graph and weights, identical
outputs on real images, and, for the demo, the same int8 quantisation parameters.

Differences allowed, and only these (edgeship/export/tflite.py says why): the CONVERSION_METADATA buffer (model
type), ``;;`` in a few fused tensors' location names where the fast path has ``;``, and, on a model with several
outputs, the order of ``subgraph.outputs`` and of tensors and buffers inside the file (the SignatureDef, which
names each output, is the same)."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

from edgeship.types import Precision

pytestmark = pytest.mark.slow

CONVERSION_METADATA = "CONVERSION_METADATA"


def _both(loaded: Any, monkeypatch: pytest.MonkeyPatch, precision: Precision = Precision.FP32,
          convert: Any = None) -> tuple[bytes, bytes]:
    """(fast path, from_keras_model) of ``convert(loaded, precision)``; the fast one made with from_keras_model
    forbidden, so a silent fallback cannot pass for the fast path."""
    import edgeship.export.tflite as tflite_export
    from edgeship._tf import tf

    if convert is None:
        convert = lambda loaded: tflite_export.convert(loaded, precision)  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(tf().lite.TFLiteConverter, "from_keras_model", _forbidden)
        fast = convert(loaded)
    with monkeypatch.context() as m:
        m.setattr(tflite_export, "serving_function", lambda model: None)
        slow = convert(loaded)
    return fast, slow


def _forbidden(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("from_keras_model ran: the fast path fell back")


def _read(flat: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flat))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _norm(name: Any) -> str:
    return _text(name).replace(";;", ";")


def _io_names(model: Any) -> tuple[list[str], list[str]]:
    sg = model.subgraphs[0]
    return [_text(sg.tensors[i].name) for i in sg.inputs], [_text(sg.tensors[i].name) for i in sg.outputs]


def _signatures(model: Any) -> list[tuple[Any, ...]]:
    return [(_text(s.signatureKey), s.subgraphIndex, [(_text(t.name), t.tensorIndex) for t in s.inputs],
             [(_text(t.name), t.tensorIndex) for t in s.outputs]) for s in model.signatureDefs or []]


def _array(values: Any) -> list[Any] | None:
    return None if values is None else np.asarray(values).tolist()


def _keys(model: Any) -> list[str]:
    """Each tensor's key by what it is, not by its name or index (which differ between the paths on a multi-output
    model): a graph input by its name, a constant by its shape, type and data, any other tensor by the op making
    it (code, options, the keys of its inputs, which output)."""
    import hashlib

    sg = model.subgraphs[0]
    made = {int(o): (op, k) for op in sg.operators for k, o in enumerate(op.outputs)}
    memo: dict[int, str] = {}

    def code(op: Any) -> int:
        c = model.operatorCodes[op.opcodeIndex]
        return max(c.builtinCode, c.deprecatedBuiltinCode)

    def options(op: Any) -> str:
        o = op.builtinOptions
        return "" if o is None else repr(sorted((k, repr(v)) for k, v in vars(o).items()))

    def key(i: int) -> str:
        if i < 0:
            return "-"
        if i not in memo:
            t = sg.tensors[i]
            if i in made:
                op, k = made[i]
                text = f"op{code(op)}:{options(op)}:{[key(int(j)) for j in op.inputs]}:{k}"
            else:
                data = model.buffers[t.buffer].data
                text = _text(t.name) if data is None else f"const{_array(t.shape)}:{t.type}:{bytes(data).hex()}"
            memo[i] = hashlib.sha256(text.encode()).hexdigest()
        return memo[i]

    return [key(i) for i in range(len(sg.tensors))]


def _tensors(model: Any) -> dict[str, tuple[Any, ...]]:
    """Every tensor by :func:`_keys`: shape, shape signature, type, data, quantisation."""
    sg = model.subgraphs[0]
    out = {}
    for key, t in zip(_keys(model), sg.tensors):
        data = model.buffers[t.buffer].data
        q = t.quantization
        out[key] = (_array(t.shape), _array(t.shapeSignature), t.type,
                    None if data is None else bytes(data),
                    None if q is None else (_array(q.scale), _array(q.zeroPoint), _array(q.min),
                                            _array(q.max), q.quantizedDimension))
    assert len(out) == len(sg.tensors)
    return out


def _names(model: Any) -> dict[str, str]:
    """Every tensor's name (``;;`` normalised) by :func:`_keys`."""
    return {k: _norm(t.name) for k, t in zip(_keys(model), model.subgraphs[0].tensors)}


def _metadata(model: Any) -> dict[str, bytes]:
    return {_text(m.name): bytes(model.buffers[m.buffer].data) for m in model.metadata or []}


def _outputs(flat: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each signature output on every image of ``x``, one image per call (through the signature runner)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flat)
    runner = interpreter.get_signature_runner("serving_default")
    (name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    rows = [runner(**{name: x[i: i + 1]}) for i in range(len(x))]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _assert_same_model(fast: bytes, slow: bytes, x: np.ndarray, *, one_output: bool) -> None:
    a, b = _read(fast), _read(slow)
    assert len(a.subgraphs) == len(b.subgraphs) == 1
    in_a, out_a = _io_names(a)
    in_b, out_b = _io_names(b)
    assert in_a == in_b and in_a[0].startswith("serving_default_") and in_a[0].endswith(":0")
    if one_output:
        assert out_a == out_b == ["StatefulPartitionedCall_1:0"]
        assert list(a.subgraphs[0].outputs) == list(b.subgraphs[0].outputs)
    else:  # the SavedModel path lists the outputs in its protobuf map's order
        assert sorted(out_a) == sorted(out_b) == [f"StatefulPartitionedCall_1:{k}" for k in range(len(out_a))]
        assert out_a == sorted(out_a, key=lambda n: int(n.rsplit(":", 1)[1]))
    assert _signatures(a) == _signatures(b) and len(_signatures(a)) == 1, (_signatures(a), _signatures(b))
    assert _signatures(a)[0][0] == "serving_default"
    assert _tensors(a) == _tensors(b)  # the same graph: shapes, batch -1, types, weights, quantisation
    assert len(a.subgraphs[0].operators) == len(b.subgraphs[0].operators)
    if one_output:  # the same names, ";;" aside (a multi-output model's fused names differ more: module docstring)
        assert _names(a) == _names(b)
    assert len(a.buffers) == len(b.buffers)
    meta_a, meta_b = _metadata(a), _metadata(b)
    assert set(meta_a) == set(meta_b) and CONVERSION_METADATA in meta_a
    assert {k: v for k, v in meta_a.items() if k != CONVERSION_METADATA} == \
        {k: v for k, v in meta_b.items() if k != CONVERSION_METADATA}
    want, got = _outputs(slow, x), _outputs(fast, x)
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.isfinite(got[key]).all()
        assert np.array_equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def demo():
    from edgeship.models.loading import load_model

    return load_model()


@pytest.fixture(scope="module")
def images(demo, demo_heldout):
    return demo.spec.preprocessing.apply(demo_heldout[0][:40]).astype(np.float32)


def test_demo_float_is_the_same_model(demo, images, monkeypatch):
    fast, slow = _both(demo, monkeypatch)
    _assert_same_model(fast, slow, images, one_output=True)


def test_nested_backbone_with_two_outputs_is_the_same_model(images, monkeypatch):
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False, weights=None)
    x = keras.Input((96, 96, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(x, [keras.layers.Dense(10, activation="softmax", name="classes")(features),
                            keras.layers.Dense(4, name="box")(features)])
    loaded = types.SimpleNamespace(keras_model=model, spec=None)  # convert() reads the Keras model only
    fast, slow = _both(loaded, monkeypatch)
    _assert_same_model(fast, slow, images, one_output=False)
    signature = _signatures(_read(fast))[0]
    assert signature[2] == [("image", 0)] and [name for name, _ in signature[3]] == ["output_0", "output_1"]
    a = _read(fast).subgraphs[0]
    assert [_text(a.tensors[i].name) for _, i in signature[3]] == ["StatefulPartitionedCall_1:0",
                                                                   "StatefulPartitionedCall_1:1"]
    assert [int(a.tensors[i].shape[-1]) for _, i in signature[3]] == [10, 4]  # output_k is the Keras output k


def test_demo_int8_has_the_same_quantisation(demo, images, monkeypatch):
    """The calibrate-only conversion through both paths, then the same quantiser: the same calibrated ranges,
    int8 parameters and outputs; the files are byte-identical once the ';;' names are normalised."""
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    fast, slow = _both(demo, monkeypatch, convert=lambda loaded: calibrate(loaded, images[:24]))
    a, b = _read(fast), _read(slow)
    assert _tensors(a) == _tensors(b)  # every calibrated min/max too
    int8 = {}
    for path, calibrated in (("fast", fast), ("slow", slow)):
        int8[path] = quantize_calibrated(calibrated, input_range=(-1.0, 1.0))
    qa, qb = int8["fast"], int8["slow"]
    assert {_norm(k): v for k, v in qa.tensor_params.items()} == {_norm(k): v for k, v in qb.tensor_params.items()}
    assert [_norm(n) for n in qa.fixed_tensors] == [_norm(n) for n in qb.fixed_tensors]
    assert [_norm(n) for n in qa.calibrated_tensors] == [_norm(n) for n in qb.calibrated_tensors]
    ma, mb = _read(qa.model), _read(qb.model)
    assert _io_names(ma) == _io_names(mb) and _signatures(ma) == _signatures(mb)
    assert _tensors(ma) == _tensors(mb) and _names(ma) == _names(mb)
    assert len(qa.model) == len(qb.model)
    from ai_edge_litert.tools import flatbuffer_utils

    for i, t in enumerate(mb.subgraphs[0].tensors):  # normalised: the names, and the converter's record of the path
        t.name = ma.subgraphs[0].tensors[i].name
    meta = {_text(m.name): m.buffer for m in ma.metadata}
    mb.buffers[meta[CONVERSION_METADATA]].data = ma.buffers[meta[CONVERSION_METADATA]].data
    assert bytes(flatbuffer_utils.convert_object_to_bytearray(ma)) == \
        bytes(flatbuffer_utils.convert_object_to_bytearray(mb))
    raw = np.clip(np.round(images * 127.5 + 127), 0, 255).astype(np.uint8)
    want, got = _outputs(qb.model, raw), _outputs(qa.model, raw)
    assert all(np.array_equal(got[k], want[k]) for k in want)
