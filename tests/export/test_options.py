"""ExportOptions (edgeship/export/options.py): one object for export(), the CLI's export arguments and the
[export] table of edgeship.toml; a wrong value is one line."""

from __future__ import annotations

import pytest

from edgeship.errors import UserError
from edgeship.export.options import CoreMLTarget, ExportOptions
from edgeship.types import Format, Layout, Precision


def test_defaults_and_strings_in_any_case():
    default = ExportOptions()
    assert default.formats == list(Format) and default.precisions is None and default.onnx_layout is Layout.NHWC
    assert (default.opset, default.deployment_target) == (17, CoreMLTarget.IOS16)
    o = ExportOptions.of(formats=["ONNX", Format.TFLITE], precisions=("fp16",), onnx_layout="NCHW",
                         deployment_target="ios17", opset=None)
    assert o.formats == [Format.ONNX, Format.TFLITE] and o.precisions == [Precision.FP16]
    assert (o.onnx_layout, o.deployment_target, o.opset) == (Layout.NCHW, CoreMLTarget.IOS17, 17)
    assert o.file_suffix(Format.ONNX) == "_nchw" and o.file_suffix(Format.TFLITE) == ""


@pytest.mark.parametrize("values, message", [
    ({"formats": ["pdf"]}, "unknown format 'pdf': choose from tflite, onnx, coreml"),
    ({"precisions": ["int8"]}, "int8 is not a float precision (fp32, fp16): int8 comes from 'edgeship quantize'"),
    ({"opset": 19}, "opset: input should be less than or equal to 18"),
    ({"deployment_target": "iOS14"}, "choose from iOS15, iOS16, iOS17, iOS18"),
])
def test_a_wrong_value_is_one_line(values, message):
    with pytest.raises(UserError, match=None) as e:
        ExportOptions.of(**values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_it_is_the_export_table_of_edgeship_toml(tmp_path):
    from edgeship.pipeline import load_config

    cfg = tmp_path / "edgeship.toml"
    cfg.write_text('[export]\nformats = ["onnx"]\nonnx_layout = "nchw"\nopset = 18\ndeployment_target = "iOS17"\n')
    assert load_config(cfg).export == ExportOptions.of(formats=["onnx"], onnx_layout="nchw", opset=18,
                                                       deployment_target="iOS17")
    assert load_config(None).export == ExportOptions()
    for text, message in [('[export]\nonnx_layout = "nhcw"\n', "[export] onnx_layout: input should be 'nhwc' or 'nchw'"),
                          ('[export]\nformats = "onnx"\n', "[export] formats: input should be a valid list"),
                          ('[export]\nopset = "17"\n', "[export] opset: input should be a valid integer"),
                          ('[export]\nlayout = "nchw"\n', "[export] has unknown keys ['layout']")]:
        cfg.write_text(text)
        with pytest.raises(UserError) as e:
            load_config(cfg)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_the_cli_takes_its_choices_and_defaults_from_it():
    from edgeship.cli import build_parser

    args = build_parser().parse_args(["export"])
    default = ExportOptions()
    assert args.formats == ",".join(default.formats) and args.onnx_layout == default.onnx_layout.value
    assert (args.opset, args.deployment_target) == (default.opset, default.deployment_target.value)
