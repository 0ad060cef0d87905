"""Bad-input catalogue, inputs part (issue 14): images, arrays, labels, signals and the disk. Each case asserts the
one line on stderr, the exit code (2 bad input, 3 environment, 143 terminated) and that nothing was written or
lost. In-process through ``edgeship.cli.main`` where possible; one subprocess for SIGTERM mid-Core-ML-export."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgeship.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only claims its size (IHDR + IEND, no pixel data): Pillow reads the size when opening it,
    which is where the decompression-bomb guard acts, so a 13,500 x 13,500 image costs 45 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its hash: what 'nothing written or lost' compares."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(code: int, err: str, expected_code: int, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert code == expected_code, (code, err)
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def artifacts(demo_export) -> Path:
    """The demo exported to a float TFLite (what ``edgeship export --formats tflite`` writes; the session's one
    export, conftest.py): what the validate cases check data against."""
    return demo_export(formats=["tflite"]).out_dir


# ------------------------------------------------------------------------------------------------ data cases
def _images(tmp: Path, files: dict[str, bytes | None]) -> Path:
    root = tmp / "images"
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:  # a real, good image
            from PIL import Image

            Image.new("RGB", (96, 96), (200, 30, 30)).save(p)
        else:
            p.write_bytes(data)
    return root


def _npy(tmp: Path, array: np.ndarray, name: str = "data.npy") -> Path:
    p = tmp / name
    np.save(p, array, allow_pickle=array.dtype == object)
    return p


def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    p = tmp / "data.npz"
    np.savez(p, **arrays)
    return p


_rng = np.random.default_rng(0)
_U8 = _rng.integers(0, 256, (4, 96, 96, 3)).astype(np.uint8)

# (id, make data (tmp -> path), extra args, needles in the one line)
DATA_CASES = [
    ("png-13500x13500-bomb", lambda t: _images(t, {"three/huge.png": _png_header(13_500, 13_500)}), [],
     ["too large to decode", "182 Mpixel", "huge.png"]),
    ("png-90-mpixel-over-limit", lambda t: _images(t, {"one/a.png": None, "one/b.png": _png_header(10_000, 9_000)}),
     [], ["too large to decode", "b.png"]),
    # a stray image beside the class folders once made the whole set unlabelled: the accuracy gates vanished (issue 29)
    ("stray-image-beside-class-folders", lambda t: _images(t, {"three/a.png": None, "stray.png": None}), [],
     ["beside the class folders", "stray.png", "three"]),
    ("images-two-folders-deep", lambda t: _images(t, {"three/a.png": None, "three/sub/b.png": None}), [],
     ["two or more folders deep", "three/sub/b.png"]),
    ("truncated-png", lambda t: _images(t, {"two/x.png": _png_header(96, 96)[:20]}), [],
     ["cannot decode image", "x.png"]),
    ("text-file-named-jpg", lambda t: _images(t, {"two/x.jpg": b"hello, not a JPEG"}), [],
     ["cannot decode image", "x.jpg"]),
    ("npy-uint16-0-65535", lambda t: _npy(t, (_U8.astype(np.uint16) * 257)), [],
     ["uint16 values", "outside 0-255", "--input-range 0,65535"]),
    ("npy-float-0-1", lambda t: _npy(t, _U8.astype(np.float32) / 255), [],
     ["scaled to 0-1", "--input-range 0,1"]),
    ("npy-float-minus1-1", lambda t: _npy(t, _U8.astype(np.float32) / 127.5 - 1), [],
     ["outside 0-255", "--input-range -1,1"]),
    ("npy-bool", lambda t: _npy(t, _U8 > 127), [], ["bool", "--input-range 0,1"]),
    ("npy-strings", lambda t: _npy(t, np.full((4, 96, 96, 3), "a")), [], ["strings", "uint8"]),
    ("npy-pickled-objects", lambda t: _npy(t, np.array([{"x": 1}, None], dtype=object)), [],
     ["python objects", "never loads"]),
    ("npy-nan", lambda t: _npy(t, np.where(_U8 > 250, np.nan, _U8.astype(np.float32))), [], ["nan"]),
    ("npy-one-channel", lambda t: _npy(t, _U8[..., :1]), [], ["(4, 96, 96, 1)", "expected"]),
    ("npz-string-labels-unknown", lambda t: _npz(t, images=_U8, labels=np.array(["cat", "dog", "cat", "dog"])),
     [], ["labels are strings", "'cat'"]),
    ("npz-fractional-labels", lambda t: _npz(t, images=_U8, labels=np.array([0.5, 1, 2, 3])), [],
     ["fractional"]),
    ("npz-labels-count", lambda t: _npz(t, images=_U8, labels=np.array([0, 1, 2])), [], ["3 labels for 4 images"]),
    ("input-range-outside", lambda t: _npy(t, _U8.astype(np.uint32) * 300), ["--input-range", "0,65535"],
     ["outside --input-range 0,65535"]),
    ("input-range-reversed", lambda t: _npy(t, _U8), ["--input-range", "1,0"], ["lo < hi"]),
    ("input-range-on-images", lambda t: _images(t, {"one/a.png": None}), ["--input-range", "0,1"],
     ["applies to .npy/.npz"]),
]


@pytest.mark.parametrize("make,extra,needles", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_one_line_exit_2_nothing_written(make, extra, needles, artifacts, tmp_path, capsys):
    data = make(tmp_path)
    before = _snapshot(artifacts)
    report = tmp_path / "report"
    code = main(["validate", "--artifacts", str(artifacts), "--data", str(data), "--report", str(report),
                 "--iterations", "1", "--kernel-path-samples", "0", *extra])
    _one_line(code, capsys.readouterr().err, 2, *needles)
    assert not report.exists()
    assert _snapshot(artifacts) == before


def test_an_unreadable_image_is_exit_3(artifacts, tmp_path, capsys, monkeypatch):
    """An image the process may not read is the environment's fault, as for every file edgeship reads: exit 3, one
    line naming it (issue 29; it was exit 2). Simulated: tests run as root, where chmod does not stop a read."""
    from PIL import Image

    data = _images(tmp_path, {"one/a.png": None, "two/b.png": None})
    real = Image.open

    def denied(fp, *args, **kwargs):
        if str(fp).endswith("b.png"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", denied)
    report = tmp_path / "report"
    code = main(["validate", "--artifacts", str(artifacts), "--data", str(data), "--report", str(report),
                 "--iterations", "1", "--kernel-path-samples", "0"])
    _one_line(code, capsys.readouterr().err, 3, "cannot read image", "b.png", "check its permissions")
    assert not report.exists()


def test_ray_not_installed_is_exit_3(artifacts, tmp_path, capsys, monkeypatch):
    """--executor ray without Ray installed is a missing library, the environment's (exit 3, as the README's table
    says), named with the command that installs it, before any work."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    data = _images(tmp_path, {"one/a.png": None})
    code = main(["validate", "--artifacts", str(artifacts), "--data", str(data), "--report", str(tmp_path / "r"),
                 "--executor", "ray"])
    _one_line(code, capsys.readouterr().err, 3, "needs Ray, which is not installed", "edgeship[ray]")
    assert not (tmp_path / "r").exists()


def test_bad_calibration_array_is_refused_before_anything_is_written(tmp_path, capsys):
    """The same policy in the quantise stage: a uint16 calibration set is refused, not clipped to white."""
    data = _npy(tmp_path, _U8.astype(np.uint16) * 257)
    out = tmp_path / "q"
    code = main(["quantize", "--calibration", str(data), "--formats", "tflite", "--out", str(out)])
    _one_line(code, capsys.readouterr().err, 2, "outside 0-255", "--input-range 0,65535")
    assert _snapshot(out) == {}


# ------------------------------------------------------------------------------------------------ label files
LABEL_CASES = [
    ("form-feed-in-label", "zero\none\ntw\x0co\nthree\nfour\nfive\nsix\nseven\neight\nnine\n".encode(),
     ["line 3", "form feed", "U+000C"]),
    ("lone-carriage-return", b"zero\none\rtwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n",
     ["line 2", "carriage return"]),
    ("nul-byte", b"zero\none\ntwo\nthr\x00ee\nfour\nfive\nsix\nseven\neight\nnine\n", ["line 4", "NUL"]),
    ("latin-1-not-utf8", "z\xe9ro\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n".encode("latin-1"),
     ["not utf-8", "line 1"]),
    ("nine-labels", b"\xef\xbb\xbfa\r\nb\r\nc\r\nd\r\ne\r\nf\r\ng\r\nh\r\ni\r\n", ["9 labels", "10 classes"]),
    ("empty", b"\xef\xbb\xbf\r\n\r\n", ["is empty"]),
]


@pytest.mark.parametrize("content,needles", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_bad_label_file_one_line_exit_2_nothing_written(content, needles, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    out = tmp_path / "o"
    code = main(["export", "--labels", str(labels), "--formats", "tflite", "--out", str(out)])
    _one_line(code, capsys.readouterr().err, 2, *needles)
    assert _snapshot(out) == {}


# ------------------------------------------------------------------------------------------------ disk
def _converted_already(monkeypatch, artifacts: Path, then=None) -> None:
    """The TFLite conversion returns the bytes the module's real conversion made (the same model, the same
    options): these cases test what happens to the write, and a second conversion costs a minute on a busy
    machine. ``then``: called after 'converting', before the bytes are written."""
    import edgeship.export.tflite as tflite_export

    data = (artifacts / "edgeship_demo_fp32.tflite").read_bytes()

    def convert(*args, **kwargs) -> bytes:
        if then is not None:
            then()
        return data

    monkeypatch.setattr(tflite_export, "export_tflite", convert)


@pytest.mark.parametrize("error,needles", [
    (errno.ENOSPC, ["no space left", "free some disk space"]),
    (errno.EACCES, ["permission denied", "check its permissions"]),
], ids=["disk-full", "permission-denied"])
def test_disk_errors_exit_3_and_keep_the_previous_export(error, needles, artifacts, tmp_path, capsys, monkeypatch):
    """A write that fails for the machine's reason (simulated: the temporary file's write raises, as a full disk
    makes it) is exit 3, one line; the previous artifact and manifest are kept byte for byte, no temporary left."""
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = _snapshot(out)
    real = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        if ".partial-" in self.name:
            real(self, data[: len(data) // 2])  # half written, then the disk fills up
            raise OSError(error, os.strerror(error), str(self))
        return real(self, data)

    _converted_already(monkeypatch, artifacts)
    monkeypatch.setattr(Path, "write_bytes", failing)
    code = main(["export", "--formats", "tflite", "--out", str(out)])
    _one_line(code, capsys.readouterr().err, 3, "cannot write", "edgeship_demo_fp32.tflite", *needles)
    assert _snapshot(out) == before


def test_unwritable_output_directory_is_exit_3_before_any_work(tmp_path, capsys, monkeypatch):
    """The output directory's write check failing with a permission error (simulated: tests run as root, where
    chmod does not stop a write) is the environment's fault: exit 3, one line, nothing written."""
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", denied)
    out = tmp_path / "o"
    code = main(["export", "--formats", "tflite", "--out", str(out)])
    _one_line(code, capsys.readouterr().err, 3, "cannot write to --out directory", "permission denied")
    assert _snapshot(out) == {}


# ------------------------------------------------------------------------------------------------ signals
def test_sigterm_in_process_runs_the_interrupt_cleanup(artifacts, tmp_path, capsys, monkeypatch):
    """SIGTERM arriving while an artifact is being written (inside its temporary-file step, before the rename):
    exit 143, one line, the previous artifact and manifest intact, no temporary left."""
    out = tmp_path / "art"
    shutil.copytree(artifacts, out)
    before = _snapshot(out)
    # delivered to the handler edgeship.cli.main installed
    _converted_already(monkeypatch, artifacts, then=lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    code = main(["export", "--formats", "tflite", "--out", str(out)])
    _one_line(code, capsys.readouterr().err, 143, "terminated", "no partial file")
    assert _snapshot(out) == before
    assert signal.getsignal(signal.SIGTERM) is previous  # main() restores the caller's handler


_SLOW_SAVE = """
import os, sys, time
from pathlib import Path
import edgeship.export.reproducible as reproducible

real = reproducible.canonical_mlpackage

def slow(path):  # the real package is written; hold the process inside the write so the signal lands there
    real(path)
    Path(os.environ["EDGESHIP_TEST_MARK"]).write_text(str(path))
    time.sleep(300)

reproducible.canonical_mlpackage = slow
from edgeship.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_mid_coreml_export_leaves_no_partial_package_and_no_manifest_entry(tmp_path):
    out, mark = tmp_path / "out", tmp_path / "mark"
    env = {**os.environ, "EDGESHIP_TEST_MARK": str(mark), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, "export", "--formats", "coreml", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the Core ML export never reached its write"
            time.sleep(0.2)
        partial = Path(mark.read_text())
        assert partial.name.startswith(".edgeship_demo_fp16.partial-") and partial.is_dir()  # mid-write indeed
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    _one_line(proc.returncode, "\n".join(l for l in err.splitlines() if l.startswith("edgeship")), 143, "terminated")
    assert not partial.exists()
    assert [p.name for p in out.iterdir()] == []  # no package, no temporary, no manifest entry for a missing file


# ------------------------------------------------------------------------------------------------ right answers
def test_16_bit_pngs_validate_exactly_like_their_8_bit_originals_and_are_counted(artifacts, tmp_path, capsys):
    """Issue 14: a 16-bit PNG was decoded as an all-white image and validated as PASSED. The same digits saved as
    16-bit (v * 257) and as 8-bit grayscale PNGs now give the same report figures, and the report counts the
    conversions."""
    from PIL import Image

    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR

    held = load_image_folder(DEMO_DIR / "heldout", (96, 96))
    figures = {}
    for depth in (8, 16):
        root = tmp_path / f"png{depth}"
        for i in range(0, len(held.paths), 36):  # 10 images, one per class
            gray = held.images[i].mean(axis=-1).round().astype(np.uint8)
            dest = root / held.paths[i].parent.name / f"{i}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gray.astype(np.uint16) * 257 if depth == 16 else gray).save(dest)
        report = tmp_path / f"report{depth}"
        main(["validate", "--artifacts", str(artifacts), "--data", str(root), "--report", str(report),
              "--iterations", "1", "--kernel-path-samples", "0"])
        capsys.readouterr()
        data = json.loads((report / "report.json").read_text())
        figures[depth] = (data["data"]["input_conversions"], data["artifacts"][0]["metrics"])
    assert figures[16][0] == {"16-bit": 10} and figures[8][0] == {"grayscale": 10}
    assert figures[16][1] == figures[8][1]
    assert "converted: 16-bit 10" in (tmp_path / "report16" / "report.md").read_text()


@pytest.mark.parametrize("contain", [True, False], ids=["contained", "in-process"])
def test_an_onnx_file_whose_name_is_not_utf8_validates_quietly(demo_export, tmp_path, capsys, contain):
    """A file name that is not valid UTF-8 (bytes 0xff): ONNX Runtime's path argument refused it and printed its
    4-line "EP Error" banner (issue 29); the file is now opened from its bytes, validated, and nothing else printed."""
    src = demo_export(formats=["onnx"]).out_dir / "edgeship_demo_fp32.onnx"
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/m\xff_fp32.onnx"))
    shutil.copy(src, odd)
    code = main(["validate", "--artifacts", str(odd), "--report", str(tmp_path / "r"), "--iterations", "1",
                 *([] if contain else ["--in-process"])])
    cap = capsys.readouterr()
    assert code == 0, cap.err + cap.out
    assert "EP Error" not in cap.err + cap.out and "Traceback" not in cap.err, cap.err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["artifacts"][0]["status"] == "passed"
