from __future__ import annotations

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
