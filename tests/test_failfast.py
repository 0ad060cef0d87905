"""Fail fast (issue 23, item 4): every mistake that can be found without running a model is found before the model
loads, so ``edgeship run`` fails in a second with one line and nothing written, not after minutes of export. Each
case asserts that the model was never loaded (``load_model`` is replaced by a tripwire). The times are printed by
``scripts/failfast.py`` (a benchmark, not a timed test)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A user's own small classifier (32x32 RGB, 3 classes) saved as .keras: not the demo."""
    import keras

    path = tmp_path_factory.mktemp("own") / "own.keras"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")], name="own")
    model.save(path)
    return path


def test_the_demo_images_never_stand_in_for_a_users_model(own_model, tmp_path, capsys, tripwire):
    """Without --data/--calibration, the demo's digits were silently used for any model: a user's photo model then
    got int8 ranges from digits and a verdict on digits. Now refused in one line, before the model loads (from
    --model alone: not the demo, not a copy of it, not a variant) and before anything is written."""
    heldout = tmp_path / "photos"  # unlabelled: a flat folder
    heldout.mkdir()
    for i in range(4):
        (heldout / f"{i}.png").write_bytes(PNG)
    cases = [
        (["quantize", "--model", str(own_model), "--formats", "tflite", "--out", str(tmp_path / "q")],
         "no --calibration given"),
        (["run", "--model", str(own_model), "--data", str(heldout), "--out", str(tmp_path / "r")],
         "no --calibration given"),
        (["run", "--model", str(own_model), "--calibration", str(heldout), "--out",
          str(tmp_path / "r")], "no --data given"),
    ]
    for argv, needle in cases:
        got = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert got == 2 and len(err) == 1 and needle in err[0] and "--" in err[0].split("pass ")[1], (argv, err)
    assert not (tmp_path / "q").exists() and not (tmp_path / "r").exists()  # nothing half-made


def test_validate_without_data_refuses_a_users_reference(own_model, tmp_path, capsys):
    """validate: the reference is the user's model (from the manifest) -> no default data either."""
    # validate: the reference is the user's model (from the manifest) -> no default data either
    assert main(["export", "--model", str(own_model), "--formats", "tflite", "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    got = main(["validate", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == 2 and len(err) == 1 and "no --data given" in err[0], err
    assert not (tmp_path / "e" / "report").exists()


def test_the_demo_takes_its_own_images_by_any_name():
    """The demo by its path (as a manifest names it) or a copy of it (same sha256) keeps its images as the default;
    a registry variant too (the product's own models); a Python-built model does not."""
    import shutil
    import tempfile

    from edgeship.models.loading import DEMO_MODEL, LoadedModel, demo_default

    def loaded(path, sha=None):
        return LoadedModel(keras_model=None, spec=None, source_path=path, source_sha256=sha)  # type: ignore[arg-type]

    from edgeship.fileio import sha256_path

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "mine.keras"
        shutil.copy(DEMO_MODEL, copy)
        assert loaded(str(copy), sha256_path(copy)).takes_demo_data
        data = copy.read_bytes()
        copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte changed: another model
        assert not loaded(str(copy), sha256_path(copy)).takes_demo_data
    assert loaded(str(DEMO_MODEL)).takes_demo_data
    assert loaded("registry:mobilenet_v2_1.0_224").takes_demo_data
    assert not loaded("python:own").takes_demo_data
    from edgeship.models.loading import source_takes_demo_data  # the same answer from --model, before loading

    assert source_takes_demo_data(None) and source_takes_demo_data(str(DEMO_MODEL))
    assert source_takes_demo_data("mobilenet_v2_1.0_224") and not source_takes_demo_data("no/such/model.keras")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "mine.keras"
        shutil.copy(DEMO_MODEL, copy)
        assert source_takes_demo_data(copy)
        data = copy.read_bytes()
        copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        assert not source_takes_demo_data(copy)
    assert demo_default(loaded("python:own"), DEMO_DIR) is None and demo_default(loaded(str(DEMO_MODEL)), DEMO_DIR)
