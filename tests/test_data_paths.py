"""Data and paths (issue 27, item 5): ``--resize stretch|center-crop`` (decoded, used by calibration and validation,
recorded in the manifest) and the manifest's model path, relative to the manifest and checked by its sha256, so
validation finds its reference from any directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeship.data import decode_image, open_data
from edgeship.errors import UserError
from edgeship.manifest import Manifest
from edgeship.models.loading import DEMO_MODEL, load_model


def _stripes(path: Path, width: int, height: int) -> Path:
    """Three equal stripes across the long side: red, green, blue (green is the centre)."""
    a = np.zeros((height, width, 3), np.uint8)
    if width >= height:
        a[:, : width // 3, 0] = 255
        a[:, width // 3 : 2 * width // 3, 1] = 255
        a[:, 2 * width // 3 :, 2] = 255
    else:
        a[: height // 3, :, 0] = 255
        a[height // 3 : 2 * height // 3, :, 1] = 255
        a[2 * height // 3 :, :, 2] = 255
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("width,height", [(90, 30), (30, 90)])
def test_center_crop_differs_from_stretch_on_a_non_square_image(tmp_path, width, height):
    path = _stripes(tmp_path / "wide.png", width, height)
    stretched, _ = decode_image(path, (12, 12))
    cropped, _ = decode_image(path, (12, 12), "center-crop")
    assert stretched.shape == cropped.shape == (12, 12, 3)
    assert not np.array_equal(stretched, cropped)
    # the centred square is the green stripe alone; stretched, all three stripes stay
    assert (cropped[..., 1] > 200).all() and (cropped[..., 0] < 60).all() and (cropped[..., 2] < 60).all()
    assert (stretched[..., 0] > 200).any() and (stretched[..., 2] > 200).any()
    assert np.array_equal(decode_image(path, (12, 12), "stretch")[0], stretched)  # the default is stretch


def test_center_crop_keeps_an_image_of_the_input_aspect_whole(tmp_path):
    path = _stripes(tmp_path / "square.png", 48, 48)
    assert np.array_equal(decode_image(path, (12, 12))[0], decode_image(path, (12, 12), "center-crop")[0])


def test_an_unknown_resize_is_one_line(tmp_path):
    path = _stripes(tmp_path / "x.png", 9, 3)
    with pytest.raises(UserError, match="unknown resize 'squash': choose from stretch, center-crop"):
        decode_image(path, (3, 3), "squash")


def test_folders_are_read_with_the_resize_and_say_so(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    _stripes(folder / "a.png", 90, 30)
    stretch = open_data(folder, (12, 12), ())
    crop = open_data(folder, (12, 12), (), resize="center-crop")
    assert stretch.describe()["resize"] == "stretch" and crop.describe()["resize"] == "center-crop"
    assert not np.array_equal(next(stretch.batches(4)).images, next(crop.batches(4)).images)


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    """The demo model copied to a folder of its own (models/demo.keras), loaded from there."""
    root = tmp_path_factory.mktemp("paths")
    (root / "models").mkdir()
    shutil.copy2(DEMO_MODEL, root / "models" / "demo.keras")
    return root, load_model(root / "models" / "demo.keras")


def test_calibration_uses_the_resize(demo_copy, tmp_path):
    from edgeship.quantize.calibration import load_calibration

    _, loaded = demo_copy
    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(3):
        _stripes(folder / f"{i}.png", 150 + i, 50)
    stretch = load_calibration(folder, loaded.spec, num_samples=3)
    crop = load_calibration(folder, loaded.spec, num_samples=3, resize="center-crop")
    assert stretch.images.shape == crop.images.shape and not np.array_equal(stretch.images, crop.images)


def test_the_manifest_records_the_resize_and_the_model_relative_to_itself(demo_copy, monkeypatch):
    from edgeship.export import open_manifest
    from edgeship.models.prepare import ModelOptions, prepare_model

    root, _ = demo_copy
    monkeypatch.chdir(root)
    loaded = prepare_model(ModelOptions(model="models/demo.keras", resize="center-crop"), echo=lambda _: None)
    assert loaded.resize == "center-crop"
    out = root / "release" / "v1"
    out.mkdir(parents=True)
    manifest = open_manifest(out, loaded)
    assert manifest.resize == "center-crop"
    assert manifest.source["path"] == "models/demo.keras"  # as export was given it
    assert manifest.source["relative_path"] == "../../models/demo.keras"  # from the manifest's directory
    manifest.save(out)
    again = Manifest.load(out)
    assert (again.resize, again.source) == ("center-crop", manifest.source)
    with pytest.raises(UserError, match="unknown --resize 'squash'"):
        prepare_model(ModelOptions(model="models/demo.keras", resize="squash"), echo=lambda _: None)


def test_the_model_is_found_from_any_directory_and_its_sha256_checked(demo_copy, tmp_path, monkeypatch):
    from edgeship.fileio import sha256_path

    root, _ = demo_copy
    model = tmp_path / "models" / "demo.keras"
    model.parent.mkdir()
    shutil.copy2(root / "models" / "demo.keras", model)
    out = tmp_path / "release"
    out.mkdir()
    digest = sha256_path(model)
    manifest = Manifest(source={"path": "models/demo.keras", "sha256": digest, "relative_path": "../models/demo.keras"},
                        model={}, preprocessing={}, labels=[])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where "models/demo.keras" (the path as export was given it) does not exist
    assert manifest.source_model(out) == out / "../models/demo.keras"
    old = Manifest(source={"path": str(model), "sha256": digest}, model={}, preprocessing={}, labels=[])
    assert old.source_model(out) == model  # an older manifest: its path, from where export ran
    gone = Manifest(source={"path": "models/demo.keras", "sha256": digest}, model={}, preprocessing={}, labels=[])
    assert gone.source_model(out) is None
    model.write_bytes(model.read_bytes() + b"changed")
    with pytest.raises(UserError, match=r"is not the model .*manifest.json records \(sha256 .*recorded "
                                        rf"{digest[:12]}\.\.\.\): pass --reference"):
        manifest.source_model(out)


def test_validate_from_another_directory_uses_the_manifest_model_and_resize(demo_export, demo_copy, tmp_path,
                                                                             monkeypatch, capsys):
    """End to end through the CLI: the release directory's manifest names the model relative to itself and records
    center-crop; validation run from elsewhere finds the model, reads the images so, and says so in the report; a
    changed model is one line, exit 2."""
    from edgeship.cli import main
    from edgeship.fileio import sha256_path

    root, _ = demo_copy
    release = tmp_path / "ship" / "release"
    demo_export(formats=["tflite"], out=release)
    model = tmp_path / "ship" / "model.keras"
    shutil.copy2(root / "models" / "demo.keras", model)
    path = release / "manifest.json"
    data = json.loads(path.read_text())
    data["source"] = {"path": "somewhere/else/model.keras", "sha256": sha256_path(model),
                      "relative_path": "../model.keras"}
    data["resize"] = "center-crop"
    path.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "ship/release", "--iterations", "2", "--kernel-path-samples", "0", "--in-process", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((release / "report" / "report.json").read_text())  # the default report directory
    assert report["data"]["resize"] == "center-crop" and report["reference"]["path"].endswith("model.keras")
    assert report["policy"]["shipped"] is True and len(report["policy"]["sha256"]) == 64  # which limits decided
    assert out.splitlines()[-1].startswith("PASSED") and "reports in ship/release/report" in out  # quiet: the verdict
    code = main(["validate", "--artifacts", "ship/release", "--resize", "stretch", "--no-report", "--iterations", "2",
                 "--kernel-path-samples", "0", "--in-process"])
    assert code == 0 and "reports in" not in capsys.readouterr().out
    model.write_bytes(model.read_bytes() + b"x")
    code = main(["validate", "ship/release", "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not the model" in err and "--reference" in err
