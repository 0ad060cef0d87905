"""Fail fast (issue 23, item 4): every mistake that can be found without running a model is found before the model
loads, so ``edgeship run`` fails in a second with one line and nothing written, not after minutes of export. Each
case asserts that the model was never loaded (``load_model`` is replaced by a tripwire). The times are printed by
``scripts/failfast.py`` (a benchmark, not a timed test)."""

from __future__ import annotations

import pytest

from edgeship.cli import main
from edgeship.models.loading import DEMO_DIR

PNG = next((DEMO_DIR / "heldout" / "zero").glob("*.png")).read_bytes()


@pytest.fixture
def tripwire(monkeypatch):
    """``load_model`` raises. The modules that bind it at import are imported first, so none keeps the tripwire
    after the test."""
    import edgeship.export  # noqa: F401
    import edgeship.models.loading as loading
    import edgeship.pipeline  # noqa: F401
    import edgeship.quantize  # noqa: F401
    import edgeship.validate.pipeline  # noqa: F401

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")
    monkeypatch.setattr(loading, "load_model", load_model)


def _files(tmp_path):
    mixed = tmp_path / "mixed"
    (mixed / "cat").mkdir(parents=True)
    (mixed / "a.png").write_bytes(PNG)
    (mixed / "cat" / "b.png").write_bytes(PNG)
    (tmp_path / "bad-policy.toml").write_text("[int8\n")
    (tmp_path / "policy-unknown.toml").write_text("[int8]\nmin_snr = 20\n")
    (tmp_path / "baseline.json").write_text("{not json")
    (tmp_path / "labels-bin.txt").write_bytes(b"\x00\x01\xff" * 10)


CASES = [
    ('[validate]\npolicy = "nope.toml"\n', 2, "policy not found"),
    ('[validate]\npolicy = "bad-policy.toml"\n', 2, "cannot read policy"),
    ('[validate]\npolicy = "policy-unknown.toml"\n', 2, "min_snr"),
    ('[validate]\ndata = "no-such-folder"\n', 2, "data not found"),
    ('[validate]\ndata = "mixed"\n', 2, "beside the class folders"),
    ('[validate]\ndata = "x.npz"\n', 2, "data file not found"),
    ('[quantize]\ncalibration = "no-such-folder"\n', 2, "data not found"),
    ('[validate]\nbaseline = "baseline.json"\n', 2, "cannot read baseline"),
    ('[validate]\nlatency_from = ["pixel7.log"]\n', 2, "file not found"),
    ('[validate]\ndevice = "Pixel 7"\n', 2, "--latency-from"),
    ('[validate]\nexpect_accuracy = 90\n', 2, "fraction"),
    ('[model]\nlabels = "labels-bin.txt"\n', 2, "not UTF-8"),
    ('[quantize]\nformats = ["tflite"]\nprecisions = ["w8a8"]\n', 2, "w8a8"),
    ('[quantize]\nmax_size = "2MB"\n', 2, "keep-float"),
]


@pytest.mark.parametrize("text, code, needle", CASES, ids=[c[2] for c in CASES])
def test_run_finds_it_before_the_model_loads(tmp_path, capsys, tripwire, text, code, needle):
    _files(tmp_path)
    (tmp_path / "edgeship.toml").write_text(text)
    out = tmp_path / "out"
    got = main(["run", str(tmp_path / "edgeship.toml"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code and len(err) == 1 and needle in err[0], err
    assert not out.exists()  # nothing written


def test_export_and_quantize_find_it_before_the_model_loads(tmp_path, capsys, tripwire):
    _files(tmp_path)
    cases = [
        (["export", "--out", str(tmp_path / "baseline.json")], 3, "is a file"),
        (["quantize", "--calibration", str(tmp_path / "nope"), "--out", str(tmp_path / "q")], 2, "data not found"),
        (["export", "--labels", str(tmp_path / "labels-bin.txt"), "--out", str(tmp_path / "e")], 2, "not UTF-8"),
    ]
    for argv, code, needle in cases:
        got = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert got == code and len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "q").exists() and not (tmp_path / "e").exists()
