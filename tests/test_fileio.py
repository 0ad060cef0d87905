from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeship.fileio import atomic_path, sha256_path, write_bytes_atomic


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.tflite"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("converter crashed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_directory_artifacts_are_replaced_whole(tmp_path):
    target = tmp_path / "m.mlpackage"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".mlpackage" and tmp.name.startswith(".")
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "w.bin").write_bytes(b"1")
    first = sha256_path(target)
    with atomic_path(target) as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "w.bin").write_bytes(b"2")
    assert sha256_path(target) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]


def test_directory_hash_ignores_location(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d / "x").mkdir(parents=True)
        (tmp_path / d / "x" / "f").write_bytes(b"same")
    assert sha256_path(tmp_path / "a") == sha256_path(tmp_path / "b")


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed_on_the_next_write(tmp_path):
    """A process killed outright (SIGKILL) cannot clean up; the next write into the folder does, leaving the
    temporaries of running processes (and every other file) alone."""
    import os

    dead = _dead_pid()
    stale_dir = tmp_path / f".m.partial-{dead}.mlpackage"
    (stale_dir / "Data").mkdir(parents=True)
    (stale_dir / "Data" / "w.bin").write_bytes(b"half")
    stale_file = tmp_path / f".model.partial-{dead}.tflite"
    stale_file.write_bytes(b"half")
    stale_old = tmp_path / f".m.mlpackage.old-{dead}"
    stale_old.mkdir()
    live = tmp_path / f".other.partial-{os.getppid()}.onnx"  # a running process's write in progress
    live.write_bytes(b"in progress")
    keep = tmp_path / "notes.partial-1.txt"  # not hidden: not ours
    keep.write_text("mine")
    write_bytes_atomic(tmp_path / "manifest.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, keep.name, "manifest.json"])


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_write_leaves_the_old_file_and_no_temp(tmp_path, signum):
    import os
    import signal

    from edgeship.fileio import Terminated, sigterm_as_interrupt

    target = tmp_path / "m.mlpackage"
    with atomic_path(target) as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "w.bin").write_bytes(b"old")
    before = sha256_path(target)
    # Python's own SIGINT handler, whatever the test run inherited: a run started in the background of a shell
    # without job control (nohup, `cmd &` in a script) starts with SIGINT ignored, and Python then installs none
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigterm_as_interrupt(), pytest.raises(Terminated if signum == "SIGTERM" else KeyboardInterrupt):
            with atomic_path(target) as tmp:
                (tmp / "Data").mkdir(parents=True)
                (tmp / "Data" / "w.bin").write_bytes(b"ha")
                os.kill(os.getpid(), getattr(signal, signum))
                for _ in range(1000):  # the handler runs at the next bytecode boundary
                    pass
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sha256_path(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]


# ------------------------------------------------------------------ reads that cannot hang (issue 29, item 3)
def test_special_files_are_refused_at_once_never_read(tmp_path):
    """A FIFO (no writer: a read would block forever), a device (/dev/zero never ends) or a directory given where a
    file is read is one UserError line, at once; a document nested 200,000 deep is one line, not a RecursionError."""
    import json as _json

    from edgeship.errors import UserError
    from edgeship.fileio import read_regular_bytes, read_structured, sha256_path
    from edgeship.models.spec import read_labels

    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    for read in (lambda p: read_structured(p, "manifest"), lambda p: read_labels(p), sha256_path,
                 lambda p: read_regular_bytes(p, "side file")):
        with pytest.raises(UserError, match="is a FIFO, not a regular file"):
            read(fifo)
    with pytest.raises(UserError, match="is a character device"):
        sha256_path(Path("/dev/zero"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UserError, match="nested too deep"):
        read_structured(deep, "manifest")
    big = tmp_path / "big.json"
    big.write_text(_json.dumps({"x": "y" * 100}))
    with pytest.raises(UserError, match="larger than"):
        read_regular_bytes(big, "side file", max_bytes=50)


def test_labels_as_json_list_and_a_pickle_refused_with_the_command(tmp_path):
    import json as _json
    import pickle

    from edgeship.errors import UserError
    from edgeship.models.spec import read_labels

    (tmp_path / "labels.json").write_text(_json.dumps(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]))
    assert read_labels(tmp_path / "labels.json") == ("n02085620-Chihuahua", "n02085782-Japanese_spaniel")
    (tmp_path / "bad.json").write_text(_json.dumps({"0": "cat"}))
    with pytest.raises(UserError, match="JSON list of class names"):
        read_labels(tmp_path / "bad.json")
    (tmp_path / "label_encoder.pkl").write_bytes(pickle.dumps(["cat", "dog"]))
    with pytest.raises(UserError, match="is a Python pickle, which edgeship never loads") as e:
        read_labels(tmp_path / "label_encoder.pkl")
    assert "classes_" in str(e.value) and "joblib.load" in str(e.value) and "labels.txt" in str(e.value)
