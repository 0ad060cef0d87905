"""manifest.json under concurrent writers (issue 29, item 5): two processes recording into one directory both
keep their records; the lock is on the directory itself, so no lock file joins the artifacts."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from edgeship.manifest import ArtifactRecord, Manifest, directory_lock
from edgeship.types import Format, Precision

SOURCE = {"path": "model.keras", "sha256": "0" * 64}


def _manifest(source=SOURCE) -> Manifest:
    return Manifest(source=dict(source), model={"name": "m"}, preprocessing={"mean": [127.5] * 3}, labels=["a", "b"])


def _record(directory: Path, name: str, fmt: Format) -> ArtifactRecord:
    (directory / name).write_bytes(name.encode())
    return ArtifactRecord(path=name, format=fmt, precision=Precision.FP32, sha256="1" * 64, size_bytes=len(name))


def test_two_writers_of_one_model_both_keep_their_records(tmp_path):
    a, b = _manifest(), _manifest()  # both opened before either saved: what two concurrent exports see
    a.add(_record(tmp_path, "m_fp32.tflite", Format.TFLITE))
    a.save(tmp_path)
    b.add(_record(tmp_path, "m_fp32.onnx", Format.ONNX))
    b.save(tmp_path)
    assert [r.path for r in Manifest.load(tmp_path).artifacts] == ["m_fp32.tflite", "m_fp32.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_fp32.onnx", "m_fp32.tflite", "manifest.json"]


def test_a_record_whose_file_is_gone_or_of_another_model_is_not_kept(tmp_path):
    a = _manifest()
    a.add(_record(tmp_path, "m_fp32.tflite", Format.TFLITE))
    a.save(tmp_path)
    (tmp_path / "m_fp32.tflite").unlink()
    b = _manifest()
    b.add(_record(tmp_path, "m_fp32.onnx", Format.ONNX))
    b.save(tmp_path)
    assert [r.path for r in Manifest.load(tmp_path).artifacts] == ["m_fp32.onnx"]
    other = _manifest({"path": "other.keras", "sha256": "2" * 64})  # another model replaces, as sequentially
    other.add(_record(tmp_path, "o_fp32.onnx", Format.ONNX))
    other.save(tmp_path)
    assert [r.path for r in Manifest.load(tmp_path).artifacts] == ["o_fp32.onnx"]


def _hold(directory: str, seconds: float, started) -> None:
    with directory_lock(Path(directory)):
        started.set()
        time.sleep(seconds)


def test_the_directory_lock_excludes_another_process(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), 1.5, started))
    holder.start()
    assert started.wait(60)
    t0 = time.monotonic()
    with directory_lock(tmp_path):
        waited = time.monotonic() - t0
    holder.join(60)
    assert waited > 0.5  # it waited for the holder (1.5 s) rather than writing beside it


def test_the_same_model_is_the_same_sha256_wherever_the_manifest_moved(tmp_path):
    """``source.relative_path`` depends on where the manifest is (issue 27, item 5): a release copied elsewhere and
    quantised there keeps its float records, as the model (its sha256) is the same."""
    moved = dict(SOURCE, relative_path="../../model.keras")
    a = _manifest(dict(SOURCE, relative_path="../model.keras"))
    a.add(_record(tmp_path, "m_fp32.tflite", Format.TFLITE))
    a.save(tmp_path)
    b = _manifest(moved)
    assert b.same_model(Manifest.load(tmp_path))
    b.add(_record(tmp_path, "m_int8.tflite", Format.TFLITE))
    b.save(tmp_path)
    assert [r.path for r in Manifest.load(tmp_path).artifacts] == ["m_fp32.tflite", "m_int8.tflite"]
    assert not _manifest({"path": "model.keras", "sha256": "3" * 64}).same_model(b)
    assert not _manifest({"path": "model.keras"}).same_model(_manifest({"path": "other.keras"}))
