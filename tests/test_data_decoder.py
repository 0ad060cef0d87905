"""edgeship.data's one decoder policy: 8-bit sRGB after explicit, counted conversions; arrays outside 0-255 read
only through --input-range; label names and one-hot labels in .npz files; label files as people save them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms

from edgeship.data import ArraySource, FolderSource, decode_image, open_data
from edgeship.errors import UserError
from edgeship.models.spec import read_labels

LABELS = ("zero", "one", "two")


def test_16_bit_grayscale_is_scaled_down_not_clipped_to_white(tmp_path):
    gray16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I;16")
    rgb, done = decode_image(tmp_path / "g.png", (32, 32))
    assert done == ["16-bit"]
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(gray16 / 257).astype(np.uint8))
    assert rgb.mean() == pytest.approx(127.5, abs=1)  # Image.convert("RGB") gives ~255 almost everywhere


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone held upright
    im.save(tmp_path / "r.png", exif=exif)
    rgb, done = decode_image(tmp_path / "r.png", (60, 40))
    assert done == ["exif_rotated"]
    assert rgb.shape == (60, 40, 3)  # now portrait
    assert tuple(rgb[0, 20]) == (255, 0, 0) and tuple(rgb[-1, 20]) == (0, 0, 255)  # the left half is on top


@pytest.mark.parametrize("mode,color,expected,conversions", [
    ("P", None, None, ["palette"]),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0), ["cmyk"]),
    ("LA", (100, 0), (100, 100, 100), ["alpha_dropped", "grayscale"]),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30), ["alpha_dropped"]),
    ("1", 1, (255, 255, 255), ["grayscale"]),
    ("L", 77, (77, 77, 77), ["grayscale"]),
    ("RGB", (1, 2, 3), (1, 2, 3), []),
])
def test_each_mode_is_converted_explicitly_and_counted(tmp_path, mode, color, expected, conversions):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im = Image.new(mode, (16, 16), color) if color is not None else Image.new("P", (16, 16), 3)
    if mode == "P":
        im.putpalette([0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 100, 50] + [0] * 756)
        expected = (200, 100, 50)
    im.save(path, quality=100) if mode == "CMYK" else im.save(path)
    rgb, done = decode_image(path, (16, 16))
    assert done == conversions
    np.testing.assert_allclose(rgb[8, 8], expected, atol=2 if mode == "CMYK" else 0)


def test_icc_profiles(tmp_path):
    """An sRGB profile needs nothing; a profile of another colour space than the pixels is ignored, and said so."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.new("RGB", (8, 8), (9, 8, 7)).save(tmp_path / "s.png", icc_profile=srgb)
    Image.new("RGB", (8, 8), (9, 8, 7)).save(tmp_path / "l.png", icc_profile=lab)
    assert decode_image(tmp_path / "s.png", (8, 8))[1] == []
    rgb, done = decode_image(tmp_path / "l.png", (8, 8))
    assert done == ["icc_ignored"] and tuple(rgb[0, 0]) == (9, 8, 7)


def test_folder_source_counts_conversions_per_image(tmp_path):
    (tmp_path / "one").mkdir()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "one" / "a.png")
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "one" / "b.png")
    Image.new("L", (8, 8)).save(tmp_path / "one" / "c.png")
    source = FolderSource(tmp_path, (8, 8), LABELS)
    batch = next(source.batches(8))
    assert source.describe()["input_conversions"] == {"16-bit": 2, "grayscale": 1}
    assert batch.images[0].max() == round(40000 / 257) and batch.labels.tolist() == [1, 1, 1]


def test_input_range_maps_values_to_pixels(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3)).astype(np.uint8)
    np.save(tmp_path / "u16.npy", u8.astype(np.uint16) * 257)
    source = open_data(tmp_path / "u16.npy", (4, 4), LABELS, input_range="0,65535")
    images = next(source.batches(8)).images
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, u8, atol=1e-3)
    assert source.describe()["input_conversions"] == {"input_range": 5}
    np.save(tmp_path / "pm1.npy", u8.astype(np.float32) / 127.5 - 1)
    images = next(open_data(tmp_path / "pm1.npy", (4, 4), LABELS, input_range=(-1, 1)).batches(8)).images
    np.testing.assert_allclose(images, u8, atol=1e-3)


def test_integer_arrays_within_0_255_are_pixels(tmp_path):
    u8 = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3))
    np.save(tmp_path / "i64.npy", u8)
    source = open_data(tmp_path / "i64.npy", (4, 4), LABELS)
    images = next(source.batches(8)).images
    assert images.dtype == np.uint8 and (images == u8).all() and source.pixels == "uint8"


def test_npz_label_names_and_one_hot_rows_become_indices(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "names.npz", images=images, labels=np.array(["two", "zero", "one"]))
    source = ArraySource(tmp_path / "names.npz", (4, 4), LABELS)
    assert source.labels.tolist() == [2, 0, 1] and source.describe()["input_conversions"] == {"label_names": 3}
    np.savez(tmp_path / "hot.npz", x=images, y=np.eye(3, dtype=np.float32)[[1, 1, 2]])
    source = ArraySource(tmp_path / "hot.npz", (4, 4), LABELS)
    assert source.labels.tolist() == [1, 1, 2] and source.describe()["input_conversions"] == {"one_hot_labels": 3}


def test_dark_float_pixels_can_be_declared(tmp_path):
    """Floats all within 0-1 are refused as 'scaled to 0-1'; --input-range 0,255 says they are pixels after all."""
    np.save(tmp_path / "dark.npy", np.full((2, 4, 4, 3), 0.5, np.float32))
    with pytest.raises(UserError, match="scaled to 0-1"):
        open_data(tmp_path / "dark.npy", (4, 4), LABELS)
    images = next(open_data(tmp_path / "dark.npy", (4, 4), LABELS, input_range="0,255").batches(2)).images
    np.testing.assert_allclose(images, 0.5)


# ------------------------------------------------------------------------------------------------ label files
def test_labels_with_bom_and_crlf(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_bytes("\ufeffzero\r\n  one \r\ntwo\r\n\r\n".encode("utf-8"))
    assert read_labels(p) == ("zero", "one", "two")


def test_unicode_line_separators_do_not_split_a_label(tmp_path):
    """str.splitlines splits on U+2028 and U+2029 (and control characters, refused): a label holding one stays one
    label."""
    p = tmp_path / "labels.txt"
    p.write_text("a\u2028b\nc\u2029d\nef\n", encoding="utf-8")
    labels = read_labels(p)
    assert len(labels) == 3
    assert labels[0] == "a\u2028b" and labels[1] == "c\u2029d"


def test_control_character_names_its_line(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_bytes(b"a\nb\nc\x1dd\n")
    with pytest.raises(UserError, match=r"line 3: .*U\+001D"):
        read_labels(p)


def test_input_range_in_the_config(tmp_path):
    from edgeship.pipeline import load_config

    cfg = tmp_path / "edgeship.toml"
    cfg.write_text("[quantize]\ninput_range = [0, 65535]\n[validate]\ninput_range = \"-1,1\"\n")
    config = load_config(cfg)
    assert config.calibration_input_range == (0.0, 65535.0) and config.input_range == (-1.0, 1.0)
    cfg.write_text("[validate]\ninput_range = [1]\n")
    with pytest.raises(UserError, match=r"\[validate\] input_range must be two numbers"):
        load_config(cfg)


def _folder(root, names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(p)
    return root


def test_the_two_validation_layouts_and_calibration_takes_any(tmp_path):
    """Validation: flat (unlabelled) or class folders (labelled); anything else refused, never read as unlabelled
    (a stray image beside the class folders used to drop the accuracy gates silently). Calibration: any depth."""
    flat = FolderSource(_folder(tmp_path / "flat", ["a.png", "b.png"]), (8, 8), None)
    assert not flat.labeled
    classes = FolderSource(_folder(tmp_path / "classes", ["cat/a.png", "dog/b.png"]), (8, 8), None)
    assert classes.labeled and list(classes.labels) == [0, 1]
    mixed = _folder(tmp_path / "mixed", ["cat/a.png", "dog/b.png", "stray.png"])
    with pytest.raises(UserError, match=r"1 image\(s\) \(e.g. stray.png\) sit beside the class folders \(cat, dog\)"):
        FolderSource(mixed, (8, 8), None)
    deep = _folder(tmp_path / "deep", ["cat/a.png", "cat/2024/b.png"])
    with pytest.raises(UserError, match="two or more folders deep"):
        FolderSource(deep, (8, 8), None)
    for root in (mixed, deep):  # calibration reads every image under the folder, whatever the layout
        assert FolderSource(root, (8, 8), None, use_labels=False).count == (3 if root == mixed else 2)
