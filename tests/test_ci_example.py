"""examples/github-actions.yml: valid YAML, a GitHub Actions workflow shape, and every ``edgeship ...`` command it
runs exists in the CLI with the options it passes; it reads the report files where ``edgeship run`` writes them."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import yaml

from edgeship.cli import build_parser
from edgeship.validate.reports import REPORT_FILES

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github-actions.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text("utf-8"))


def _steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def _edgeship_commands(wf: dict) -> list[list[str]]:
    """Every shell line (continuations joined) that starts with ``edgeship``, split as the shell would."""
    out = []
    for step in _steps(wf):
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            line = line.strip()
            if line.startswith("edgeship "):
                out.append(shlex.split(line))
    return out


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_workflow_is_valid_yaml_with_the_shape_of_a_workflow():
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the bare key `on` as true
    assert {"pull_request", "push", "release"} <= set(triggers)
    for job in wf["jobs"].values():
        assert job["runs-on"] and job["steps"]
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), step
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]  # pinned to a major


def test_every_edgeship_command_and_option_exists_in_the_cli():
    commands = _edgeship_commands(_workflow())
    assert {c[1] for c in commands} >= {"run", "validate"}
    subparsers = _options(build_parser())
    for argv in commands:
        sub = subparsers.get(argv[1])
        assert sub is not None, f"edgeship {argv[1]}: no such command"
        known = {opt for a in sub._actions for opt in a.option_strings}
        used = {t.split("=", 1)[0] for t in argv[2:] if t.startswith("--")}
        assert used <= known, f"edgeship {argv[1]}: unknown options {sorted(used - known)}"
        # and the parser takes the whole line, each shell variable standing for a value ($logs: the
        # "--latency-from FILE" pairs the loop before it builds)
        args = []
        for t in argv[2:]:
            args += ["--latency-from", "bench.log"] if t == "$logs" else ["value" if "$" in t else t]
        sub.parse_args(args)
    runs = [c for c in commands if c[1] == "run"]
    assert any("--baseline" in c for c in runs) and any("--baseline" not in c for c in runs)  # first run: none


def test_it_reads_the_reports_where_edgeship_run_writes_them():
    """``edgeship run`` writes its reports to OUT/report/ (edgeship.pipeline.run); the workflow posts report.md to
    the job summary, uploads report.html, publishes junit.xml and keeps report.json."""
    text = WORKFLOW.read_text("utf-8")
    pipeline = (ROOT / "edgeship" / "pipeline.py").read_text("utf-8")
    assert 'report_dir = config.out / "report"' in pipeline
    assert '"$OUT/report/report.md" >> "$GITHUB_STEP_SUMMARY"' in text
    assert "report_paths: ${{ env.OUT }}/report/junit.xml" in text
    assert '"$OUT/report/report.json"' in text and "path: ${{ env.OUT }}/report/" in text
    assert set(REPORT_FILES.values()) == {"report.json", "report.md", "report.html", "junit.xml"}
    wf = _workflow()
    after_gate = [s for s in wf["jobs"]["gate"]["steps"] if s.get("name", "").startswith(("Job summary", "Upload",
                                                                                          "Publish"))]
    assert len(after_gate) == 4 and all(s["if"] == "${{ !cancelled() }}" for s in after_gate)  # also when it fails
