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
