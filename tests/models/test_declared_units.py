"""A declared mean/std in the wrong units is refused before any work (issue 23, item 1): ImageNet's mean/std written
in 0-1 units on 0-255 pixels would make every file feed the model values up to about 1,100, and the validator
would compare each file with a reference fed the same wrong values."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeship.cli import main
from edgeship.errors import UserError
from edgeship.models.spec import check_declared_units

IMAGENET_01 = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Every convention in use (0-255 pixel units): accepted
CONVENTIONS = {
    "[-1, 1]": ((127.5,) * 3, (127.5,) * 3),
    "[0, 1]": ((0.0,) * 3, (255.0,) * 3),
    "raw pixels": ((0.0,) * 3, (1.0,) * 3),
    "ImageNet mean/std": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "Caffe BGR mean subtraction": ((103.939, 116.779, 123.68), (1.0,) * 3),
    "mean only": ((127.5,) * 3, None),
    "std only": (None, (255.0,) * 3),
}

# (mean, std, words the one line must hold)
WRONG = [
    (*IMAGENET_01, ("0-1 units", "123.675,116.28,103.53", "58.395,57.12,57.375", "--force-preprocessing")),
    ((-1.0,) * 3, (2.0,) * 3, ("mean -1", "outside the 0-255 pixel range")),
    ((127.5,) * 3, (0.5,) * 3, ("std 0.5", "outside 1-510")),  # std below 1 with a pixel mean: refused too
    (None, (0.229,) * 3, ("0-1 units", "--std 58.395")),
    ((300.0,) * 3, (127.5,) * 3, ("mean 300", "outside")),
    ((127.5,) * 3, (1000.0,) * 3, ("std 1000", "outside 1-510")),
    ((127.5,) * 3, (0.0,) * 3, ("std must be positive",)),
    ((127.5,) * 3, (float("inf"),) * 3, ("finite",)),
]


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_every_convention_in_use_is_accepted(name):
    mean, std = CONVENTIONS[name]
    check_declared_units(mean, std)  # raises nothing


@pytest.mark.parametrize("mean,std,words", WRONG, ids=[f"wrong-{i}" for i in range(len(WRONG))])
def test_implausible_declarations_are_refused_with_the_fix(mean, std, words):
    with pytest.raises(UserError) as e:
        check_declared_units(mean, std)
    line = str(e.value)
    assert "\n" not in line
    for w in words:
        assert w in line, (w, line)


def _cli(capsys, *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_cli_refuses_0_1_units_before_loading_anything(capsys, tmp_path, command):
    out = tmp_path / "out"
    code, err = _cli(capsys, command, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                     "--out", str(out))
    assert code == 2 and len(err.splitlines()) == 1 and "0-1 units" in err and "Traceback" not in err
    assert not out.exists()  # nothing made, nothing half-written


def test_cli_refuses_negative_mean(capsys, tmp_path):
    code, err = _cli(capsys, "export", "--mean=-1", "--std", "2", "--out", str(tmp_path / "out"))
    assert code == 2 and "outside the 0-255 pixel range" in err


def test_config_refuses_0_1_units_and_force_lets_them_through(capsys, tmp_path):
    from edgeship.pipeline import load_config

    config = tmp_path / "edgeship.toml"
    config.write_text("[model]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n")
    code, err = _cli(capsys, "run", str(config), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.splitlines()) == 1 and "[model] mean/std" in err and "0-1 units" in err
    assert not (tmp_path / "out").exists()
    config.write_text("[model]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
                      "force_preprocessing = true\n")
    loaded = load_config(config)
    assert loaded.force_preprocessing and loaded.std == (0.229, 0.224, 0.225)


def test_api_declaration_checked_unless_forced():
    from edgeship.models.loading import declare_preprocessing, load_model

    loaded = load_model(None)  # the embedded demo
    with pytest.raises(UserError, match="0-1 units"):
        declare_preprocessing(loaded, mean=IMAGENET_01[0], std=IMAGENET_01[1])
    assert loaded.spec.preprocessing.std == (127.5, 127.5, 127.5)  # unchanged by the refused declaration
    declare_preprocessing(loaded, mean=IMAGENET_01[0], std=IMAGENET_01[1], force=True)
    assert loaded.spec.preprocessing.std == IMAGENET_01[1]


def test_pipeline_run_checks_units_before_any_work(tmp_path):
    from edgeship.pipeline import RunConfig, run

    out = tmp_path / "out"
    with pytest.raises(UserError, match="0-1 units"):
        run(RunConfig(mean=IMAGENET_01[0], std=IMAGENET_01[1], out=out), echo=lambda s: None)
    assert not out.exists()


def test_every_command_can_say_what_the_files_expect_and_where_it_came_from():
    """describe_input: the preprocessing, colour order, pixel range and labels, each with its source (item 3)."""
    from edgeship.models.loading import declare_preprocessing, describe_input, load_model

    demo = load_model(None)
    line = describe_input(demo)
    assert "(x - 127.5) / 127.5" in line and "RGB" in line and "-1 to 1" in line
    assert "the demo's training" in line and "labels: the demo's labels.txt (10 classes)" in line
    declare_preprocessing(demo, mean=(0.0,) * 3, std=(255.0,) * 3, bgr=True)
    line = describe_input(demo)
    assert "x / 255" in line and "BGR" in line and "0 to 1" in line and "declared (--mean/--std/--bgr)" in line
    bare = load_model(demo.keras_model)  # a keras.Model given in Python: nothing declared, nothing in the graph
    line = describe_input(bare)
    # an unlabelled linear output: regression values, not classes numbered 0..K-1 (issue 24)
    assert "assumed: nothing declared" in line and "output: 10 values (regression)" in line
