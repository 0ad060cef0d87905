"""The CLI's conventions (issue 27, item 4): one spelling per option with every former one still accepted, -q/-v on
every subcommand, short help, artifacts as positionals, a report by default, ``run`` from flags, ``sweep``'s exit
code and plain output, plurals. Argument parsing only, or the pipeline stubbed: no model is converted here."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from edgeship.cli import build_parser, default_report_dir, main

SUBCOMMANDS = ("models", "export", "quantize", "validate", "sweep", "run")


def _sub(name: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]


def _one_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edgeship: error: "), (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ------------------------------------------------------------------------------------------------ spellings
@pytest.mark.parametrize("argv,old,new,dest", [
    (["export"], "--precision", "--precisions", "precisions"),
    (["quantize"], "--precision", "--precisions", "precisions"),
    (["sweep"], "--precision", "--precisions", "precisions"),
    (["validate", "d"], "--report", "--out", None),
    (["validate"], "--artifacts", None, None),
])
def test_every_former_spelling_still_parses_and_is_hidden_from_help(argv, old, new, dest):
    parser = build_parser()
    if old == "--artifacts":  # the former required option: its paths join the positionals
        args = parser.parse_args(["validate", "--artifacts", "a.tflite", "b.onnx"])
        assert args.artifacts_option == ["a.tflite", "b.onnx"] and args.artifacts == []
        assert "--artifacts" not in _sub("validate").format_help()
        return
    value = "fp16" if dest else "somewhere"
    given_old = parser.parse_args([*argv, old, value])
    given_new = parser.parse_args([*argv, new, value])
    if dest:
        assert getattr(given_old, dest) == getattr(given_new, dest) == value
    else:  # validate: --report is read with --out (the error names the spelling typed)
        assert (given_old.report, given_new.out) == (value, value)
    help_text = _sub(argv[0]).format_help()
    assert new in help_text and not re.search(re.escape(old) + r"(?![\w-])", help_text), help_text


def test_sweep_and_quantize_and_export_spell_precisions_alike():
    for name in ("export", "quantize", "sweep"):
        assert any("--precisions" in a.option_strings for a in _sub(name)._actions), name
        assert any("--out" in a.option_strings for a in _sub(name)._actions), name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_takes_quiet_and_verbose_and_short_help(name):
    parser = build_parser()
    extra = ["x.tflite"] if name == "validate" else []
    for flag in ("-q", "--quiet", "-v", "--verbose"):
        args = parser.parse_args([name, flag, *extra])
        assert args.quiet or args.verbose
    with pytest.raises(SystemExit):
        parser.parse_args([name, "-q", "-v", *extra])  # one or the other
    for action in _sub(name)._actions:  # one line of help each; the measured figures are in docs/cli.md
        if action.help and action.help != argparse.SUPPRESS:
            assert len(action.help) <= 120 and " dB" not in action.help, (action.option_strings, action.help)


def test_quantize_help_is_short(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 110 and "dB" not in text and "docs/cli.md" in text


def test_resize_help_says_what_the_figures_assume():
    for name, default in (("validate", "the manifest's, else stretch"), ("quantize", "stretch"), ("run", "stretch")):
        text = " ".join(_sub(name).format_help().split())
        assert "fit other-sized images: stretch or center-crop; the figures assume it" in text, name
        assert f"(default: {default})" in text, name


# ------------------------------------------------------------------------------------------------ validate
def test_validate_without_artifacts_or_with_two_report_choices_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["validate"])
    _one_line(code, capsys.readouterr().err, "no artifacts given", "DIR_OR_FILES")
    code = main(["validate", "x.tflite", "--out", "r", "--no-report"])
    _one_line(code, capsys.readouterr().err, "--out", "--no-report")
    code = main(["validate", "x.tflite", "--report", "r", "--no-report"])
    _one_line(code, capsys.readouterr().err, "--report", "--no-report")
    code = main(["validate", "x.tflite", "--report", "r", "--out", "s"])
    _one_line(code, capsys.readouterr().err, "--out s", "--report r")
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_default_report_directory_is_beside_the_first_artifact(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    (release / "manifest.json").write_text("{}")
    assert default_report_dir(release) == release / "report"
    assert default_report_dir(release / "m.tflite") == release / "report"
    assert default_report_dir(tmp_path / "m.mlpackage") == tmp_path / "report"  # a bundle is a file here


def test_an_unwritable_default_report_directory_names_the_option(capsys, tmp_path):
    (tmp_path / "report").write_text("a file where the report directory would go")
    (tmp_path / "m.tflite").write_bytes(b"x")
    code = main(["validate", str(tmp_path / "m.tflite")])
    err = capsys.readouterr().err
    assert code == 3 and "--out" in err and "is a file" in err, err


# ------------------------------------------------------------------------------------------------ -q / -v
def test_quiet_and_verbose_set_the_environment_for_the_command_only(monkeypatch, capsys):
    import edgeship.cli as cli

    seen = {}

    def fake(args):
        seen[args.command] = {k: os.environ.get(k) for k in ("EDGESHIP_PROGRESS", "EDGESHIP_VERBOSE",
                                                              "TF_CPP_MIN_LOG_LEVEL")}
        print("a line a quiet export does not print")
        return 0

    monkeypatch.setenv("EDGESHIP_PROGRESS", "bar")
    monkeypatch.delenv("EDGESHIP_VERBOSE", raising=False)
    monkeypatch.setattr(cli, "_cmd_export", fake)
    monkeypatch.setattr(cli, "_cmd_models", fake)
    assert main(["export", "-q"]) == 0
    assert capsys.readouterr().out == ""  # export has no verdict: a quiet success prints nothing
    assert seen["export"]["EDGESHIP_PROGRESS"] == "off"
    assert main(["models", "-v"]) == 0
    assert "a line" in capsys.readouterr().out
    assert seen["models"] == {"EDGESHIP_PROGRESS": "lines", "EDGESHIP_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}
    assert os.environ["EDGESHIP_PROGRESS"] == "bar" and "EDGESHIP_VERBOSE" not in os.environ  # restored


def test_without_a_flag_tensorflow_stays_quiet():
    """Neither -q nor -v changes nothing: TensorFlow's C++ log level is the quiet one (edgeship._tf)."""
    import subprocess
    import sys

    code = ("import os\nfrom edgeship.cli import main\nfrom edgeship._tf import quiet_environment\n"
            "quiet_environment()\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ.get('EDGESHIP_VERBOSE'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "EDGESHIP_VERBOSE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.stdout.split() == ["3", "None"], proc.stderr


# ------------------------------------------------------------------------------------------------ run
def test_run_takes_a_model_and_data_without_a_config(monkeypatch, capsys, tmp_path):
    import edgeship.pipeline as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda config, echo: (seen.append(config), echo("PASSED in 1.0 s"),
                                                               type("R", (), {"exit_code": 0})())[-1])
    code = main(["run", "--model", "m.keras", "--data", "held", "--calibration", "cal", "--out", str(tmp_path / "o"),
                 "--resize", "center-crop", "--labels", "l.txt", "--bgr"])
    assert code == 0 and "PASSED" in capsys.readouterr().out
    c = seen[0]
    assert (c.model, c.labels, c.bgr, c.resize, c.out) == ("m.keras", "l.txt", True, "center-crop", tmp_path / "o")
    assert c.validate.data == "held" and c.quantize.calibration == "cal"
    assert c.model_options().resize == "center-crop"


def test_run_flags_override_the_config(monkeypatch, capsys, tmp_path):
    import edgeship.pipeline as pipeline

    (tmp_path / "edgeship.toml").write_text(
        '[model]\npath = "from-config.keras"\nlabels = "labels.txt"\nresize = "center-crop"\n'
        '[quantize]\ncalibration = "cal-config"\n[validate]\ndata = "data-config"\niterations = 3\n'
        '[output]\ndir = "build"\n')
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda config, echo: (seen.append(config),
                                                               type("R", (), {"exit_code": 1})())[-1])
    assert main(["run", str(tmp_path / "edgeship.toml"), "--model", "flag.keras", "--data", "data-flag", "-q"]) == 1
    c = seen[0]
    assert c.model == "flag.keras" and c.validate.data == "data-flag"  # the flags win...
    assert c.labels == str(tmp_path / "labels.txt") and c.quantize.calibration == str(tmp_path / "cal-config")
    assert c.validate.iterations == 3 and c.out == tmp_path / "build" and c.resize == "center-crop"  # ...the rest stays
    (tmp_path / "bad.toml").write_text('[model]\nresize = "squash"\n')
    code = main(["run", str(tmp_path / "bad.toml")])
    _one_line(code, capsys.readouterr().err, "resize", "squash")


# ------------------------------------------------------------------------------------------------ sweep
ROWS = [
    {"variant": "mobilenet_v2_0.35_96", "format": "tflite", "precision": "fp32", "macs": 1e7, "params": 4e5,
     "size_bytes": 2e6, "p50_ms": 1.5, "status": "passed", "report": "out/variants/a/report/report.html"},
    {"variant": "mobilenet_v2_0.5_96", "status": "failed", "reason": "tflite conversion failed: boom"},
]


def test_sweep_exits_1_when_a_variant_fails_and_lists_each_report(monkeypatch, capsys, tmp_path):
    import edgeship.sweep as sweep

    monkeypatch.setattr(sweep, "sweep", lambda config, progress, echo: list(ROWS))
    code = main(["sweep", "--out", str(tmp_path), "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 1
    assert "mobilenet_v2_0.35_96: passed, report out/variants/a/report/report.html" in out
    assert "mobilenet_v2_0.5_96: FAILED, no report (tflite conversion failed" in out
    assert "| variant |" not in out and "---|" not in out  # a plain table, not raw Markdown
    assert out.rstrip().endswith("FAILED: 1 of 2 variants failed")
    monkeypatch.setattr(sweep, "sweep", lambda config, progress, echo: ROWS[:1])
    assert main(["sweep", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASSED: 1 variant passed")
    assert main(["sweep", "--out", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().out == "PASSED: 1 variant passed\n"


def test_sweep_leaves_no_colour_reset_at_exit():
    """Ray's bundled colorama registers an exit hook writing ESC[0m; the sweep unregisters it."""
    import subprocess
    import sys

    code = ("import ray\nfrom ray.autoscaler._private import cli_logger\nimport colorama.initialise as ci\n"
            "ci.orig_stdout = type('T', (), {'write': lambda s, t: sys.__stdout__.write(t), 'closed': False, "
            "'isatty': lambda s: True, 'flush': lambda s: None, 'fileno': lambda s: 1})()\n"
            "import sys\nfrom edgeship.sweep import _no_colour_reset_at_exit\n"
            "if sys.argv[1] == 'fix':\n    _no_colour_reset_at_exit()\nprint('done')\n")
    runs = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True)
            for how in ("fix", "nofix")}
    assert runs["fix"].returncode == 0, runs["fix"].stderr
    assert "\x1b[0m" in runs["nofix"].stdout  # the hook, as Ray leaves it, on a stream that says it is a terminal
    assert runs["fix"].stdout == "done\n"


def test_plurals():
    from edgeship.progress import counted
    from edgeship.sweep import failed_variants, text_table

    assert (counted(1, "artifact"), counted(2, "artifact"), counted(0, "variant")) == (
        "1 artifact", "2 artifacts", "0 variants")
    assert failed_variants(ROWS) == ["mobilenet_v2_0.5_96"]
    table = text_table(ROWS)
    assert table.splitlines()[0].startswith("variant") and "reason: tflite conversion failed" in table


@pytest.mark.parametrize("argv, helps", [
    (["validate", "out/", "--bogus"], "edgeship validate --help"),
    (["quantize", "--formats"], "edgeship quantize --help"),
    (["models", "--no-such", "1"], "edgeship models --help"),
    (["--bogus"], "edgeship --help"),
])
def test_a_usage_error_points_to_its_own_commands_help(capsys, argv, helps):
    """An unknown option of a subcommand is the subcommand's mistake: the line points to its --help, not the top's."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].endswith(f"(see '{helps}')"), err
