"""The bad-input catalogue (issue 14): each case is what an adversarial or careless user gives edgeship, and each
asserts the exit code of the contract (0 passed, 1 a gate failed, 2 bad input, 3 the environment, 4 a bug), that
stderr is exactly one line without a traceback, and that nothing was written or lost.

Configs, policies and usage errors run in-process and fail before any model is loaded (fast). The manifest cases
share one exported + quantised demo directory (``demo_release`` in conftest.py: TFLite fp32 and int8), copied per
case, and validate on 8 held-out images."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeship.cli import main


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time: what 'nothing written or lost'
    compares."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line(code: int, err: str, expected_code: int, *needles: str) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeship: "), lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------- configs
CONFIGS = [
    ('[model]\ntrust = "false"\n', "[model] trust", "valid boolean"),  # a string is not read as true
    ("[model]\ntrust = 1\n", "[model] trust", "valid boolean"),
    ('[quantize]\nrelu6_fixed = "yes"\n', "relu6_fixed", "valid boolean"),
    ('[quantize]\nnum_samples = "200"\n', "num_samples", "valid integer"),
    ("[validate]\niterations = 2.5\n", "iterations", "valid integer"),
    ("[validate]\niterations = -1\n", "iterations", "greater than or equal to 1"),
    ("[validate]\nthreads = 0\n", "threads", "greater than or equal to 1"),
    ('[quantize]\nprecision = ["w8"]\n', "[quantize] has unknown keys ['precision']", "precisions"),
    ("[exprot]\nformats = []\n", "unknown table [exprot]", "[export]"),
    ("[quantize]\nmax_drop = 99\n", "max_drop", "write 0.99"),
    ('[validate]\nrequire = ["pdf"]\n', "require", "'tflite', 'onnx' or 'coreml'"),
    ('[quantize]\nkeep_float = "most"\n', "keep_float", "'auto'"),
    ("model = 3\n", "[model] must be a table", ""),
    ("[model\n", "cannot read config", ""),
]


@pytest.mark.parametrize("text,where,what", CONFIGS, ids=[f"config-{i}" for i in range(len(CONFIGS))])
def test_bad_config(capsys, tmp_path, text, where, what):
    config = tmp_path / "edgeship.toml"
    config.write_text(text)
    before = _snapshot(tmp_path)
    code, out, err = _run(capsys, "run", str(config), "--out", str(tmp_path / "out"))
    _one_line(code, err, 2, str(config), where, what)
    assert _snapshot(tmp_path) == before and out == ""  # no out dir, nothing run


# ---------------------------------------------------------------------------------------------------- policies
POLICIES = [
    ("[int8]\ntop1_agreement = -1\n", "[int8] top1_agreement", "fraction in [0, 1]"),  # would switch the gate off
    ("[int8]\ntop1_agreement = 99\n", "[int8] top1_agreement", "looks like a percent: write 0.99"),
    ("[int8]\naccuracy_top1_drop = -0.01\n", "accuracy_top1_drop", "fraction in [0, 1]"),
    ('[latency.onnx.int8]\np50_ratio = { to = "tflite.int9", max = 1.1 }\n', "p50_ratio] to", "'tflite.int8'"),
    ("[latency.onnx.int8]\np50_ratio = 1.1\n", "p50_ratio] must be a table", ""),
    ("[int8]\nsqnr_db = [20]\n", "[int8] sqnr_db", "valid number"),
    ("[int8]\ntop1_agreement = true\n", "[int8] top1_agreement", "valid number"),
    ("fp32 = 1\n", "[fp32] must be a table", ""),
    ("[confidence]\nmargin_bins = [0.3, 0.1]\n", "margin_bins", "increasing"),
    ("[latency.tflite.int8]\np50_ms = -1\n", "p50_ms", "greater than 0"),
    ("[fp32]\nagreement = 1\n", "[fp32] has unknown keys ['agreement']", "top1_agreement"),
]


@pytest.mark.parametrize("text,where,what", POLICIES, ids=[f"policy-{i}" for i in range(len(POLICIES))])
def test_bad_policy(capsys, tmp_path, text, where, what):
    """Refused before any artifact, model or data is touched; the report directory is not even created."""
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    before = _snapshot(tmp_path)
    code, _, err = _run(capsys, "validate", "--artifacts", str(tmp_path / "none.tflite"), "--policy", str(policy),
                        "--report", str(tmp_path / "report"))
    _one_line(code, err, 2, str(policy), where, what)
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- usage
USAGE = [
    (["validate", "--artifacts", "x.tflite", "--iterations", "-1"], "--iterations: must be 1 or more"),
    (["validate", "--artifacts", "x.tflite", "--threads", "0"], "--threads: must be 1 or more"),
    (["validate", "--artifacts", "x.tflite", "--threads", "two"], "'two' is not a whole number"),
    (["validate", "--artifacts", "x.tflite", "--kernel-path-samples", "-1"], "must be 0 or more"),
    (["quantize", "--num-samples", "0"], "--num-samples: must be 1 or more"),
    (["validate"], "no artifacts given"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,what", USAGE, ids=[f"usage-{i}" for i in range(len(USAGE))])
def test_usage_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, what):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    _one_line(code, err, 2, what)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def release(demo_release):
    return demo_release


def _copy(release, tmp_path) -> tuple[Path, Path]:
    out, data = release
    dest = tmp_path / "release"
    shutil.copytree(out, dest, symlinks=True)
    return dest, data


def _edit_manifest(directory: Path, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _int8(manifest: dict) -> dict:
    return next(a for a in manifest["artifacts"] if a["precision"] == "int8")


def _validate(capsys, directory: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "validate", "--artifacts", str(directory), "--data", str(data), "--iterations", "1",
                "--kernel-path-samples", "0", *extra)


def _escape_dotdot(d: Path) -> str:
    shutil.copy(d / "edgeship_demo_int8.tflite", d.parent / "outside.tflite")
    _edit_manifest(d, lambda m: _int8(m).update(path="../outside.tflite"))
    return "leaves the artifacts directory"


def _escape_absolute(d: Path) -> str:
    shutil.copy(d / "edgeship_demo_int8.tflite", d.parent / "outside.tflite")
    _edit_manifest(d, lambda m: _int8(m).update(path=str(d.parent / "outside.tflite")))
    return "leaves the artifacts directory"


def _escape_symlink(d: Path) -> str:
    target = d.parent / "outside.tflite"
    shutil.move(d / "edgeship_demo_int8.tflite", target)
    (d / "edgeship_demo_int8.tflite").symlink_to(target)
    return "outside the artifacts directory"


def _missing(d: Path) -> str:
    (d / "edgeship_demo_int8.tflite").unlink()
    return "edgeship_demo_int8.tflite, but it is missing"


def _directory(d: Path) -> str:
    (d / "edgeship_demo_int8.tflite").unlink()
    (d / "edgeship_demo_int8.tflite").mkdir()
    return "is a directory"


def _bad_hash_type(d: Path) -> str:
    _edit_manifest(d, lambda m: _int8(m).update(sha256=12345))
    return "not a valid edgeship manifest"


def _bad_format(d: Path) -> str:
    _edit_manifest(d, lambda m: _int8(m).update(format="pdf"))
    return "not a valid edgeship manifest"


@pytest.mark.parametrize("tamper", [_escape_dotdot, _escape_absolute, _escape_symlink, _missing, _directory,
                                    _bad_hash_type, _bad_format], ids=lambda f: f"manifest{f.__name__}")
def test_a_bad_manifest_is_refused(capsys, release, tmp_path, tamper):
    directory, data = _copy(release, tmp_path)
    needle = tamper(directory)
    before = _snapshot(tmp_path)
    code, out, err = _validate(capsys, directory, data, "--report", str(tmp_path / "report"))
    _one_line(code, err, 2, needle)
    assert _snapshot(tmp_path) == before and out == ""


def _flip_bytes(d: Path) -> None:
    f = d / "edgeship_demo_int8.tflite"
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # inside the weights: the file still loads
        data[i] ^= 0x01
    f.write_bytes(bytes(data))


def _fp32_over_int8(d: Path) -> None:
    shutil.copy(d / "edgeship_demo_fp32.tflite", d / "edgeship_demo_int8.tflite")


@pytest.mark.parametrize("tamper", [_flip_bytes, _fp32_over_int8], ids=["flipped-bytes", "fp32-over-int8"])
def test_a_tampered_artifact_fails_with_the_reason(capsys, release, tmp_path, tamper):
    directory, data = _copy(release, tmp_path)
    tamper(directory)
    before = _snapshot(directory)
    code, out, err = _validate(capsys, directory, data, "--report", str(tmp_path / "report"))
    assert code == 1 and "Traceback" not in err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    int8 = rows[("tflite", "int8")]
    assert int8["status"] == "failed" and "not the file the manifest records" in int8["reason"]
    assert int8["integrity"].startswith("modified") and int8["metrics"]["top1_agreement"] is None  # never run
    assert {k: (a["status"], a["integrity"]) for k, a in rows.items() if k != ("tflite", "int8")} == {
        ("tflite", "fp32"): ("passed", "verified")}
    assert report["allow_modified"] is False and _snapshot(directory) == before


@pytest.mark.parametrize("swap", ["fp32-over-int8", "removed"])
def test_a_file_swapped_during_the_run_fails(capsys, release, tmp_path, monkeypatch, swap):
    """The int8 file is the recorded one when hashed, then replaced (by the better fp32 file) or removed while the
    runtimes run: it was judged on bytes the manifest does not record, so it fails, naming the change, instead of
    passing as "verified" (issue 29, item 1). The untouched fp32 file still passes."""
    from edgeship.validate.executors import LocalExecutor

    directory, data = _copy(release, tmp_path)
    real_run = LocalExecutor.run

    def run_then_swap(self, job, reference, progress=True):
        outcome = real_run(self, job, reference, progress)  # the files were hashed before this, then judged here
        if swap == "removed":
            (directory / "edgeship_demo_int8.tflite").unlink()
        else:
            _fp32_over_int8(directory)
        return outcome

    monkeypatch.setattr(LocalExecutor, "run", run_then_swap)
    code, out, err = _validate(capsys, directory, data, "--report", str(tmp_path / "report"))
    assert code == 1 and "Traceback" not in err, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {a["precision"]: a for a in report["artifacts"]}
    assert rows["int8"]["status"] == "failed" and "changed while it was validated" in rows["int8"]["reason"]
    assert rows["int8"]["integrity"].startswith("changed during validation")
    assert (rows["fp32"]["status"], rows["fp32"]["integrity"]) == ("passed", "verified")


def test_an_untouched_release_is_verified_and_passes(capsys, release, tmp_path):
    """The control: files as export and quantise recorded them pass the integrity check (exit 0)."""
    directory, data = release
    before = _snapshot(directory)
    code, _, err = _validate(capsys, directory, data, "--report", str(tmp_path / "report"))
    assert code in (0, 1) and "Traceback" not in err  # int8 on 8 images: its gates are not what is tested here
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {a["precision"]: a for a in report["artifacts"]}
    assert {p: a["integrity"] for p, a in rows.items()} == {"fp32": "verified", "int8": "verified"}
    assert rows["fp32"]["status"] == "passed" and rows["int8"]["metrics"]["sqnr_db"] is not None  # both ran
    assert "manifest" not in (rows["int8"]["reason"] or "")
    assert _snapshot(directory) == before


def test_allow_modified_validates_the_file_as_it_is_and_says_so(capsys, release, tmp_path):
    directory, data = _copy(release, tmp_path)
    _fp32_over_int8(directory)  # a deliberate edit: the fp32 file is better than int8 at every gate
    code, _, err = _validate(capsys, directory, data, "--report", str(tmp_path / "report"), "--allow-modified")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert report["allow_modified"] is True and int8["status"] == "passed"
    assert int8["integrity"].startswith("modified") and "--allow-modified" in int8["reason"]
    assert int8["metrics"]["top1_agreement"] == 1.0


# ---------------------------------------------------------------------------------------------------- environment
def test_a_report_dir_that_is_a_file_fails_before_the_work(capsys, release, tmp_path):
    directory, data = _copy(release, tmp_path)
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    before = _snapshot(tmp_path)
    code, out, err = _validate(capsys, directory, data, "--report", str(blocker))
    _one_line(code, err, 3, "--report", "is a file")
    assert out == "" and _snapshot(tmp_path) == before  # nothing validated, the file kept


def test_an_unwritable_report_dir_fails_before_the_work(capsys, release, tmp_path):
    directory, data = _copy(release, tmp_path)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "report"
    elif Path("/sys").is_dir() and not os.access("/sys", os.W_OK | os.X_OK) or _sys_unwritable():
        target = Path("/sys/edgeship-report")  # root ignores file modes, but sysfs refuses new entries
    else:
        pytest.skip("running as root without a read-only filesystem to write to")
    code, out, err = _validate(capsys, directory, data, "--report", str(target))
    _one_line(code, err, 3, "cannot write to --report directory")
    assert out == "" and not target.exists()


def _sys_unwritable() -> bool:
    try:
        Path("/sys/edgeship-write-probe").mkdir()
    except OSError:
        return True
    Path("/sys/edgeship-write-probe").rmdir()
    return False


def test_disk_full_is_exit_3_in_one_line(capsys, monkeypatch):
    """A real ENOSPC (the kernel's /dev/full), raised inside a command: the CLI boundary maps it to exit 3."""
    import edgeship.cli as cli

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")

    def write_to_full_disk(args):
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        return 0

    monkeypatch.setattr(cli, "_cmd_models", write_to_full_disk)
    code, _, err = _run(capsys, "models")
    _one_line(code, err, 3, "No space left on device", "ENOSPC", "free some space")


def test_a_missing_runtime_is_exit_3(capsys, monkeypatch):
    import edgeship.cli as cli

    def needs_a_runtime(args):
        import edgeship_runtime_that_is_not_installed  # noqa: F401

        return 0

    monkeypatch.setattr(cli, "_cmd_models", needs_a_runtime)
    code, _, err = _run(capsys, "models")
    _one_line(code, err, 3, "edgeship_runtime_that_is_not_installed", "not installed")


def test_a_bug_is_one_line_exit_4_and_edgeship_debug_shows_the_traceback(capsys, monkeypatch):
    import edgeship.cli as cli

    monkeypatch.setattr(cli, "_cmd_models", lambda args: {}["no such key"])
    code, _, err = _run(capsys, "models")
    _one_line(code, err, 4, "internal error", "KeyError", "EDGESHIP_DEBUG=1")
    monkeypatch.setenv("EDGESHIP_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["models"])


def test_permission_denied_is_exit_3():
    from edgeship.errors import EnvironmentProblem, UserError, from_os_error

    assert isinstance(from_os_error(PermissionError(errno.EACCES, "Permission denied", "/x")), EnvironmentProblem)
    assert from_os_error(OSError(errno.ENOSPC, "No space left on device")).exit_code == 3
    missing = from_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"))
    assert type(missing) is UserError and missing.exit_code == 2 and "/nope" in str(missing)


# ---------------------------------------------------------------------------------------------------- models
def test_a_file_writing_savedmodel_reference_is_refused(capsys, release, tmp_path):
    """--reference a SavedModel whose serving graph writes a file, without --trust-model: refused, no file."""
    from edgeship._tf import tf

    t = tf()
    marker = tmp_path / "MARKER"

    class Served(t.Module):
        @t.function(input_signature=[t.TensorSpec((None, 96, 96, 3), t.float32)])
        def serve(self, x):
            t.io.write_file(str(marker), "pwned")
            return {"logits": t.tile(t.reduce_mean(x, axis=[1, 2]), [1, 4])[:, :10]}

    m = Served()
    t.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    directory, data = release
    code, _, err = _validate(capsys, directory, data, "--reference", str(tmp_path / "sm"))
    _one_line(code, err, 2, "WriteFile", "--trust-model")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- counts
def test_an_accuracy_drop_of_exactly_one_point_meets_the_one_point_gate():
    """280/300 vs 277/300 correct: a drop of 3/300 = 0.01 exactly, which '<= 0.01' must pass (the difference of the
    two shares is 0.010000000000000009)."""
    from edgeship.validate.compare import Comparison
    from edgeship.validate.policy import load_policy

    assert 280 / 300 - 277 / 300 > 0.01  # the float trap this test is about
    labels = [str(i) for i in range(10)]
    truth = np.arange(300) % 10
    ref = np.eye(10, dtype=np.float32)[np.where(np.arange(300) < 280, truth, (truth + 1) % 10)]
    out = np.eye(10, dtype=np.float32)[np.where(np.arange(300) < 277, truth, (truth + 1) % 10)]
    c = Comparison(labels)
    c.update(ref, out, np.zeros((300, 2, 2, 3), np.uint8), truth, [f"s{i}" for i in range(300)], 0)
    metrics = c.metrics()
    assert metrics.accuracy_top1_drop == 0.01
    gates = {g.name: g for g in load_policy().gate_metrics("tflite", "int8", metrics)}
    assert gates["accuracy_top1_drop"].passed
    assert gates["top1_agreement"].value == pytest.approx(297 / 300) and gates["top1_agreement"].passed  # 0.99
