"""ValidateOptions: one object behind the Python API's keywords, the CLI's validation groups and [validate]."""

from __future__ import annotations

import pytest

from edgeship.errors import UserError
from edgeship.validate.options import ExecutorName, ValidateOptions


def test_the_cli_takes_its_choices_and_defaults_from_the_options():
    from edgeship.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["validate", "--artifacts", "x.tflite"])
    defaults = ValidateOptions()
    assert (args.threads, args.iterations, args.kernel_path_samples, args.executor) == (
        defaults.threads, defaults.iterations, defaults.kernel_path_samples, defaults.executor)
    sub = next(a for a in parser._subparsers._group_actions[0].choices["validate"]._actions if a.dest == "executor")
    assert sub.choices == [e.value for e in ExecutorName]


def test_the_config_table_is_the_options(tmp_path):
    from edgeship.pipeline import ConfigFile, load_config

    assert ConfigFile.model_fields["validate"].annotation is ValidateOptions
    cfg = tmp_path / "edgeship.toml"
    cfg.write_text('[validate]\nexecutor = "ray"\nwarmup = 2\nrequire = ["onnx"]\n')
    options = load_config(cfg).validate
    assert isinstance(options, ValidateOptions) and options.executor is ExecutorName.RAY and options.warmup == 2
    assert [str(f) for f in options.require] == ["onnx"]
    cfg.write_text('[validate]\nexecutor = "dask"\n')
    with pytest.raises(UserError, match=r"\[validate\] executor: input should be 'local' or 'ray', got 'dask'"):
        load_config(cfg)
    with pytest.raises(AttributeError, match="validate option"):
        load_config(None).threads = 2  # would be shadowed and never used


@pytest.mark.parametrize("kwargs,needle", [
    (dict(threads=0), r"validate\(\): \[validate\] threads: input should be greater than or equal to 1"),
    (dict(kernel_path_samples=-1), r"\[validate\] kernel_path_samples: input should be greater than or equal to 0"),
    (dict(executor="dask"), "unknown executor 'dask'"),
    (dict(require=["pdf"]), "unknown format 'pdf'"),
])
def test_the_keyword_adapter_refuses_a_bad_option_in_one_line_before_any_work(kwargs, needle):
    from edgeship.validate import validate

    with pytest.raises(UserError, match=needle) as e:
        validate(["does-not-exist.tflite"], **kwargs)  # the options are checked before the artifacts
    assert "\n" not in str(e.value)
