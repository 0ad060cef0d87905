"""The format declarations (edgeship/formats.py): one per format, every implementation it names importable, and
each stage's table reading them."""

from __future__ import annotations

import sys

import pytest

from edgeship.formats import FORMATS, format_of
from edgeship.types import Format, Precision


def test_every_format_is_declared_once_with_its_own_suffix():
    assert list(FORMATS) == list(Format)
    assert all(spec.format is f for f, spec in FORMATS.items())
    suffixes = [spec.suffix for spec in FORMATS.values()]
    assert len(set(suffixes)) == len(suffixes) and all(s.startswith(".") for s in suffixes)
    assert [format_of(s.upper()) for s in suffixes] == list(Format) and format_of(".pdf") is None


def test_each_declared_implementation_imports():
    for spec in FORMATS.values():
        refs = [spec.exporter, spec.quantizer, *(r.runner for r in spec.runtimes)]
        refs += [spec.kernel_path.runner] if spec.kernel_path else []
        refs += [spec.precision_probe] if spec.precision_probe else []
        for ref in refs:
            assert callable(ref.load()), ref.target


def test_default_precisions_are_among_the_supported():
    for spec in FORMATS.values():
        assert spec.default_precision in spec.float_precisions
        assert set(spec.default_quantized) <= set(spec.quantized_precisions)
        assert not set(spec.float_precisions) & {Precision.INT8, Precision.W8, Precision.W8A8}


def test_the_stages_tables_read_the_declarations():
    from edgeship import runtimes
    from edgeship.export.common import EXTENSIONS, FLOAT_PRECISIONS
    from edgeship.quantize import DEFAULT_PRECISIONS, QUANTIZED_PRECISIONS, QUANTIZERS

    assert EXTENSIONS == {Format.TFLITE: ".tflite", Format.ONNX: ".onnx", Format.COREML: ".mlpackage"}
    assert FLOAT_PRECISIONS[Format.COREML] == (Precision.FP16, Precision.FP32)
    assert QUANTIZED_PRECISIONS[Format.ONNX] == (Precision.INT8,)
    assert DEFAULT_PRECISIONS[Format.COREML] == (Precision.W8, Precision.W8A8)
    assert QUANTIZERS[Format.TFLITE]().__name__ == "quantize_tflite_file"
    assert set(runtimes.KERNEL_PATHS) == {Format.TFLITE, Format.ONNX}
    coreml = "coreml" if sys.platform == "darwin" else "coreml-reference"
    assert runtimes.RUNTIME_NAMES == {Format.TFLITE: "litert", Format.ONNX: "onnxruntime", Format.COREML: coreml}
    for fmt in Format:
        assert runtimes._FACTORIES[fmt]().runtime == runtimes.RUNTIME_NAMES[fmt]


@pytest.mark.parametrize("fmt", [Format.TFLITE, Format.ONNX])
def test_an_unreadable_file_is_guessed_fp32(tmp_path, fmt):
    from edgeship.validate.pipeline import guess_precision

    path = tmp_path / f"broken{FORMATS[fmt].suffix}"
    path.write_bytes(b"not a model")
    assert guess_precision(fmt, path) is Precision.FP32
