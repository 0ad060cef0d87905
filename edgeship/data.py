"""Images and arrays from disk, the one way every stage reads them (one decoder policy).

Decoder policy (Pillow; the same for export's data, calibration and validation):

* **8-bit sRGB RGB out.** Every decoded image becomes (H, W, 3) uint8 RGB by an explicit conversion, each counted
  (:attr:`DataSource.conversions`, reported as ``data.input_conversions``): ``16-bit`` (16-bit grayscale, ``I;16`` /
  ``I``, scaled down by 257 — 65535 -> 255 — not clipped to white as ``Image.convert`` does), ``palette``
  (``P``/``PA``), ``cmyk``, ``grayscale`` (``L``/``LA``/``1``), ``alpha_dropped`` (RGBA/LA/PA: the colour channels are kept, the alpha
  ignored), ``icc_to_srgb`` (an embedded non-sRGB ICC profile applied with LittleCMS, ``ImageCms``; ``icc_ignored``
  when the profile cannot be applied), ``first_frame`` (animated files), ``exif_rotated`` (EXIF orientation applied
  with ``ImageOps.exif_transpose``, as phone cameras store it). 16-bit RGB PNGs are reduced to 8 bits by Pillow
  itself (high byte), not counted. 32-bit float images (``F``) are refused.
* **Size limit.** An image above :data:`MAX_IMAGE_PIXELS` (Pillow's own decompression-bomb threshold, 89.5
  Mpixel) is refused with one line (exit 2) before it is decoded — Pillow's ``DecompressionBombError`` and
  ``DecompressionBombWarning`` become that line.
* **Resize.** Bilinear to the model's input size: ``stretch`` (default) scales each axis, ``center-crop`` first takes
  the largest centred crop of the input's aspect (:class:`edgeship.types.Resize`; ``--resize``, recorded in the
  manifest at export and used by calibration and validation alike).

Folder layouts (the one statement of them; ``--data`` and ``--calibration`` alike):

* **Validation data** (``--data``): either every image directly in the folder (unlabelled), or every image in a
  class folder, ``DATA/<class>/<image>`` (labelled: the folder names the class, matched to the model's labels, in
  sorted order when the model has none). Anything else — an image beside the class folders, a folder two levels
  deep — is refused with one line naming a misplaced file, never read as unlabelled (which would silently drop
  the accuracy gates).
* **Calibration data** (``--calibration``): every image under the folder, at any depth; folder names are not read.

Arrays (``.npy``/``.npz``): uint8 0-255 pixels, or integer/float arrays whose values lie in 0-255 (float arrays stay
floats). Anything else — uint16 0-65535, floats in 0-1 or -1..1, bool, strings, pickled objects — is refused naming
what to do, unless ``input_range=(lo, hi)`` (``--input-range LO,HI``) says how the values map to pixels: ``lo`` -> 0,
``hi`` -> 255, linearly (float32 pixels; values outside [lo, hi] are refused). ``.npz`` labels: class indices, label
names (mapped to indices through the model's labels), or one-hot rows.

Over 400 lines on purpose: the one decoder policy (images and arrays) in one module, so a rule changes in
one place; the array checks are most of its length.
"""

from __future__ import annotations

import collections
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from edgeship.errors import EnvironmentProblem, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: A segmentation ground-truth mask beside its image: ``photo.jpg`` -> ``photo.mask.png`` (an 8-bit PNG of class
#: indices, :data:`IGNORE_CLASS` for pixels no class is claimed for, as PASCAL VOC marks them). Never an image.
MASK_SUFFIX = ".mask.png"
IGNORE_CLASS = 255


def mask_path(image: Path) -> Path:
    """Where the ground-truth mask of ``image`` sits (:data:`MASK_SUFFIX`)."""
    return image.with_name(image.stem + MASK_SUFFIX)


def read_mask(path: Path, size: tuple[int, int], classes: int, resize: str = "stretch") -> np.ndarray:
    """(H, W) int64 class indices of the mask PNG at ``path`` at ``size`` = (height, width) (nearest neighbour, so
    no class is invented at edges), fitted as its image is (``resize``). Raises :class:`UserError` for an
    unreadable mask or a value that is neither a class index (0..classes-1) nor :data:`IGNORE_CLASS`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise UserError(f"mask {path} is an image in {im.mode} mode: save class indices as an 8-bit gray or "
                                "palette PNG (one value per pixel)")
            mask = np.asarray(fit(im, size, resize, nearest=True), dtype=np.int64)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read mask {path}: {e}") from None
    bad = (mask >= classes) & (mask != IGNORE_CLASS)
    if bad.any():
        raise UserError(f"mask {path} holds value {int(mask[bad][0])}, not a class index of the model's {classes} "
                        f"classes (0..{classes - 1}) nor {IGNORE_CLASS} (ignore)")
    return mask
#: Largest decoded image, in pixels: Pillow's ``Image.MAX_IMAGE_PIXELS`` default (1024 * 1024 * 1024 // 4 // 3),
#: above which Pillow itself warns of a decompression bomb (and refuses above twice as many).
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray | None  # (N,) int class indices, or None when the folder has no class subfolders
    paths: list[Path]


def image_files(root: Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.lower().endswith(MASK_SUFFIX))
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def _too_large(path: Path, pixels: int | None) -> UserError:
    size = f" ({pixels / 1e6:.0f} Mpixel)" if pixels else ""
    return UserError(f"image {path} is too large to decode{size}: the limit is {MAX_IMAGE_PIXELS / 1e6:.1f} Mpixel "
                     "(decompression-bomb guard); resize it first")


def fit(im: "Image.Image", size: tuple[int, int], resize: str = "stretch", nearest: bool = False) -> "Image.Image":
    """``im`` at ``size`` = (height, width), bilinear: stretched, or (``center-crop``) its largest centred crop of
    that aspect scaled (:class:`edgeship.types.Resize`); ``nearest`` for class masks. Raises :class:`UserError`
    for an unknown ``resize``."""
    from PIL import Image

    from edgeship.types import Resize

    how = Resize.parse(str(resize), "resize")
    box = None
    if how is Resize.CENTER_CROP:
        w, h = im.size
        target = size[1] / size[0]  # width / height
        if w / h > target:  # too wide: crop the sides
            cw = max(1, round(h * target))
            box = ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
        elif w / h < target:  # too tall: crop top and bottom
            ch = max(1, round(w / target))
            box = (0.0, (h - ch) / 2, float(w), (h + ch) / 2)
    if im.size == (size[1], size[0]) and box is None:
        return im
    return im.resize((size[1], size[0]), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR, box=box)


def decode_image(path: Path, size: tuple[int, int], resize: str = "stretch") -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 sRGB at ``size`` = (height, width), fitted by ``resize`` (:func:`fit`), and the conversions
    applied (names as in the module docstring). Raises :class:`UserError` for an undecodable, too large or float
    image, or an unknown ``resize``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    done: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im: Image.Image = Image.open(path)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                import re

                m = re.search(r"\((\d+) pixels\)", str(e))
                raise _too_large(path, int(m.group(1)) if m else None) from None
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise _too_large(path, w * h)
            if getattr(im, "n_frames", 1) > 1:
                done.append("first_frame")
            icc = im.info.get("icc_profile")
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block: the pixels are still fine, shown as stored
                orientation = 1
            if orientation in (2, 3, 4, 5, 6, 7, 8):  # 1 (or a value out of the EXIF range): as stored
                im = ImageOps.exif_transpose(im)
                done.append("exif_rotated")
            rgb = None
            if icc and im.mode in ("CMYK", "L"):  # the profile describes these pixels: apply it to them
                rgb = _icc_to_srgb(im, icc, done)
                if rgb is not None:
                    done.append("cmyk" if im.mode == "CMYK" else "grayscale")
            elif icc:
                rgb = _to_rgb8(im, path, done)
                rgb = _icc_to_srgb(rgb, icc, done) or rgb
            if rgb is None:
                rgb = _to_rgb8(im, path, done)
            return np.asarray(fit(rgb, size, resize), dtype=np.uint8), done
    except UserError:
        raise
    except PermissionError as e:  # the environment's (exit 3), as for every other file edgeship reads
        raise EnvironmentProblem(f"cannot read image {path}: {e.strerror}; check its permissions") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # SyntaxError: Pillow's broken-file error
        raise UserError(f"cannot decode image {path}: {e}") from None


def read_image(path: Path, size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """(H, W, 3) uint8 RGB at ``size`` = (height, width), by :func:`decode_image`'s policy."""
    return decode_image(path, size, resize)[0]


def _to_rgb8(im: "Image.Image", path: Path, done: list[str]) -> "Image.Image":
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise UserError(f"image {path} is 32-bit integer ({a.min()}..{a.max()}): save it as 8- or 16-bit")
        done.append("16-bit")
        gray = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 -> 255, as 8-bit viewers show it
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        raise UserError(f"image {path} holds 32-bit float pixels: save it as an 8-bit image (or an .npy with "
                        "--input-range)")
    if mode in ("P", "PA"):
        done.append("palette")
        if mode == "P" and "transparency" not in im.info:
            return im.convert("RGB")
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        done.append("alpha_dropped")
    if mode in ("L", "LA", "La", "1"):
        done.append("grayscale")
    elif mode == "CMYK":
        done.append("cmyk")
    return im.convert("RGB")


def _icc_to_srgb(im: "Image.Image", icc: bytes, done: list[str]) -> "Image.Image | None":
    """``im`` (RGB, CMYK or L) through its embedded ICC profile (Display P3, Adobe RGB, a press CMYK...) to sRGB
    RGB; None when the profile is sRGB already (nothing to do) or cannot be applied (``icc_ignored``)."""
    from PIL import ImageCms

    space = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}.get(im.mode)
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(src) or "").lower().replace(" ", ""):
            return None
        if space is None or src.profile.xcolor_space.strip() != space:
            done.append("icc_ignored")
            return None
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, AttributeError):
        done.append("icc_ignored")
        return None
    if out is None:  # pragma: no cover - profileToProfile returns the image unless inPlace
        return None
    done.append("icc_to_srgb")
    return out


def check_flat(root: Path, files: Sequence[Path]) -> None:
    """Refuse (one :class:`UserError` line) a validation folder that is neither flat nor class folders (module
    docstring, "Folder layouts"): ``files`` are the images under ``root`` and not all one class-folder level deep."""
    top = [f for f in files if f.parent == root]
    deep = [f for f in files if f.parent != root and f.parent.parent != root]
    if deep:
        example = deep[0].relative_to(root)
        raise UserError(
            f"{root}: {len(deep)} image(s) sit two or more folders deep (e.g. {example}): validation data are either "
            f"all images in one folder (unlabelled) or all in class folders DATA/<class>/<image> (labelled)")
    if top and len(top) != len(files):
        classes = sorted({f.parent.name for f in files if f.parent != root})
        raise UserError(
            f"{root}: {len(top)} image(s) (e.g. {top[0].name}) sit beside the class folders "
            f"({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}): move them into their class folder or "
            f"remove them (a mixed folder would be read as unlabelled, without the accuracy gates)")


def load_image_folder(root: Path, size: tuple[int, int], class_names: Sequence[str] | None = None,
                      resize: str = "stretch") -> ImageSet:
    """All images under ``root`` in memory; ``root/<class>/<image>`` gives labels (see :class:`FolderSource`)."""
    source = FolderSource(root, size, class_names, resize=resize)
    batches = list(source.batches(256))
    labels = None if source.labels is None else np.concatenate([b.labels for b in batches if b.labels is not None])
    return ImageSet(images=np.concatenate([b.images for b in batches]), labels=labels, paths=list(source.files))


@dataclass
class Batch:
    images: np.ndarray  # (n, H, W, 3) RGB: uint8 pixels, or float32 pixels in 0-255 (float arrays)
    labels: np.ndarray | None  # (n,) class indices
    sources: list[str]  # where each sample came from, for reports
    offset: int  # index of the first sample in the whole set
    # With ``skip_bad``: the samples that could not be read, (source, reason), and the index in the whole set of
    # each sample kept (None: offset, offset + 1, ...)
    failed: list[tuple[str, str]] = field(default_factory=list)
    indices: np.ndarray | None = None

    @property
    def positions(self) -> int | np.ndarray:
        """Where the batch's samples sit in the whole set: ``offset`` (consecutive) or (n,) indices."""
        return self.offset if self.indices is None else self.indices


class DataSource:
    """Samples streamed in batches, so 50,000 images never need 50,000 images of memory at once.

    ``conversions`` counts, per conversion name (module docstring), the samples it was applied to so far — complete
    once the batches have been read; :meth:`describe` reports it as ``input_conversions``."""

    #: how images of another size or aspect were fitted (:func:`fit`); None for arrays (at the input size already)
    resize: str | None = None
    #: ground-truth masks the set holds but was not opened to read (``masks=None``: the model is not a segmenter),
    #: said for a message ("12 <image>.mask.png files", "a 'masks' array"); None when there are none
    masks_unused: str | None = None

    def __init__(self, source: str, count: int, labeled: bool, pixels: str = "uint8") -> None:
        self.source, self.count, self.labeled = source, count, labeled
        self.pixels = pixels  # "uint8" (raw images) or "float32" (float pixels, not rounded)
        self.conversions: collections.Counter[str] = collections.Counter()

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:  # pragma: no cover - abstract
        """Batches of ``batch_size`` over samples ``start`` to ``stop`` (default: the end): a shard of the set.
        With ``skip_bad``, a sample that cannot be read is left out of its batch and listed in ``Batch.failed``
        with its reason (else it raises :class:`UserError`)."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": self.count, "labeled": self.labeled, "pixels": self.pixels,
                **({"resize": self.resize} if self.resize else {}),
                "input_conversions": dict(sorted(self.conversions.items()))}

    def spread(self, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Up to ``count`` samples (N, H, W, 3) uint8, evenly spread over the set (every class folder represented),
        with their labels (N,) when the set has them. Float pixels are rounded to uint8."""
        index = np.unique(np.linspace(0, self.count - 1, min(self.count, count)).round().astype(int))
        reader = getattr(self, "read", None)
        if reader is not None:  # a folder: decode just those images
            images = np.stack([reader(int(i)) for i in index])
        else:
            images = np.asarray(getattr(self, "take")(index))
        labels = getattr(self, "labels", None)
        if images.dtype != np.uint8:
            images = np.clip(np.round(images), 0, 255).astype(np.uint8)
        return images, None if labels is None else np.asarray(labels)[index]


class FolderSource(DataSource):
    """Every image under ``root``, recursively. With ``use_labels`` (validation), ``root/<class>/<image>`` gives
    each image the label its folder names; without (calibration, which needs no labels), folder names are never
    read, so class folders, ``batch_01/`` sub-folders or any other layout are all fine."""

    resize: str  # always set: how its images are fitted (DataSource.resize)

    def __init__(self, root: Path, size: tuple[int, int], class_names: Sequence[str] | None,
                 use_labels: bool = True, masks: tuple[int, int] | None = None, resize: str = "stretch") -> None:
        self.root, self.size, self.resize = Path(root), size, str(resize)
        self.files = image_files(self.root)
        self.masks = None
        if masks is None:  # masks beside the images a non-segmenter cannot use: said, for the caller to refuse
            seen = sum(1 for f in self.files if mask_path(f).is_file())
            self.masks_unused = f"{seen} <image>{MASK_SUFFIX} file{'s' if seen != 1 else ''}" if seen else None
        else:  # a segmentation: each image's truth is its mask beside it, when every image has one
            have = [mask_path(f).is_file() for f in self.files]
            if any(have) and not all(have):
                missing = next(f for f, h in zip(self.files, have) if not h)
                raise UserError(f"{self.root}: {sum(have)} of {len(have)} images have a ground-truth mask beside them "
                                f"({missing.relative_to(self.root)} has no {mask_path(missing).name}): give every "
                                f"image its <name>{MASK_SUFFIX}, or none")
            self.masks = masks if all(have) else None
            self.classes = len(class_names or ())
            self.labels = None
            super().__init__(str(self.root), len(self.files), self.masks is not None)
            return
        labeled = use_labels and all(f.parent.parent == self.root for f in self.files)
        if use_labels and not labeled:
            check_flat(self.root, self.files)
        self.labels = None
        if labeled:
            class_names = class_names or sorted({f.parent.name for f in self.files})
            index = {n: i for i, n in enumerate(class_names)}
            unknown = sorted({f.parent.name for f in self.files} - index.keys())
            if unknown:
                raise UserError(
                    f"class folders {unknown[:5]} in {self.root} are not among the model's {len(class_names)} labels "
                    f"({', '.join(list(class_names)[:5])}...): name class folders after the labels"
                )
            self.labels = np.array([index[f.parent.name] for f in self.files], dtype=np.int64)
        super().__init__(str(self.root), len(self.files), labeled)

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` decoded by the policy, its conversions counted."""
        image, done = decode_image(self.files[i], self.size, self.resize)
        self.conversions.update(done)
        return image

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:
        """Batches of images ``start``..``stop``; ``skip_bad``: an image that cannot be read is left out of its batch
        and listed in ``Batch.failed`` with its reason, instead of failing the run (the sharded executors)."""
        stop = len(self.files) if stop is None else min(stop, len(self.files))
        for first in range(start, stop, batch_size):
            files = self.files[first : min(first + batch_size, stop)]
            sources = [f.relative_to(self.root).as_posix() for f in files]
            labels = None if self.labels is None else self.labels[first : first + len(files)]
            if self.masks is not None:  # (n, h, w) class indices at the model's output map size
                labels = np.stack([read_mask(mask_path(f), self.masks, self.classes, self.resize) for f in files])
            if not skip_bad:
                yield Batch(np.stack([self.read(first + j) for j in range(len(files))]), labels, sources, first)
                continue
            images, kept, failed = [], [], []
            for j in range(len(files)):
                try:
                    images.append(self.read(first + j))
                    kept.append(j)
                except UserError as e:
                    failed.append((sources[j], str(e)))
            if not failed:
                yield Batch(np.stack(images), labels, sources, first)
                continue
            keep = np.array(kept, dtype=np.int64)
            empty = np.zeros((0, *self.size, 3), np.uint8)
            yield Batch(np.stack(images) if images else empty, None if labels is None else labels[keep],
                        [sources[j] for j in kept], first, failed, first + keep)


def parse_input_range(value: "str | Sequence[float] | None", what: str = "--input-range") -> tuple[float, float] | None:
    """'0,65535' or [0, 65535] -> (0.0, 65535.0); None stays None. ``lo < hi``, both finite, else UserError."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 2 or not all(np.isfinite(parts)) or parts[0] >= parts[1]:
        raise UserError(f"{what} must be two numbers LO,HI with LO < HI (the array values that mean pixel 0 and "
                        f"255), got {value!r}")
    return parts[0], parts[1]


class ArraySource(DataSource):
    """``.npy`` (images) or ``.npz`` (``images`` or ``x``, optional ``labels`` or ``y``): RGB pixels in 0-255,
    (N, H, W, 3) at the model's input size. ``.npy`` files are memory-mapped.

    uint8 arrays (and integer arrays within 0-255) are raw pixels, batched as uint8; float arrays within 0-255 are
    float pixels (e.g. after resizing or augmentation), batched as float32 and not rounded, so the reference sees
    them exactly and an 8-bit-input artifact is fed them normalised and re-quantised
    (:meth:`edgeship.runtimes.runner.Runner.feed`). Other values are refused unless ``input_range`` maps them
    (module docstring); floats all within 0-1 are refused as "scaled to 0-1" (pass ``input_range=(0, 255)`` if
    they really are dark 0-255 pixels).

    ``class_names``: the model's labels (or their count): label names in an ``.npz`` are mapped through them.
    ``use_labels=False`` (calibration): stored labels are not read."""

    _label_conversion: str | None = None  # set while the labels are read: how they were converted

    def __init__(self, path: Path, size: tuple[int, int], class_names: "Sequence[str] | int",
                 input_range: tuple[float, float] | None = None, use_labels: bool = True,
                 masks: tuple[int, int] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        stored_masks = None
        names = None if isinstance(class_names, int) else list(class_names)
        num_classes = class_names if isinstance(class_names, int) else len(class_names)
        try:
            if path.suffix.lower() == ".npy":
                images, labels = np.load(path, mmap_mode="r", allow_pickle=False), None
            else:
                with np.load(path, allow_pickle=False) as z:
                    key = next((k for k in ("images", "x") if k in z), None)
                    if key is None:
                        raise UserError(f"{path} has arrays {sorted(z.files)}; name the images 'images' (or 'x')")
                    images = z[key]
                    lkey = next((k for k in ("labels", "y") if k in z), None)
                    labels = z[lkey] if lkey and use_labels else None
                    if masks is not None and "masks" in z:
                        stored_masks = z["masks"]
                    elif "masks" in z:
                        self.masks_unused = "a 'masks' array"
        except UserError:
            raise
        except (ValueError, OSError, EOFError) as e:
            if "allow_pickle" in str(e) or "Python objects" in str(e):
                raise UserError(f"{path} holds Python objects (a pickled array), which edgeship never loads: save "
                                "numeric arrays (uint8 pixels 0-255, integer labels)") from None
            raise UserError(f"cannot read {path} as a NumPy array: {e}") from None
        _check_pixel_dtype(path, images.dtype, input_range)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"{path}: images have shape {images.shape}; expected (N, height, width, 3) RGB")
        if tuple(images.shape[1:3]) != tuple(size):
            raise UserError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, the model takes "
                            f"{size[0]}x{size[1]}; resize them first")
        if len(images) == 0:
            raise UserError(f"{path} holds no images")
        lo, hi = _value_range(images)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"{path}: images contain NaN or Inf")
        self.input_range = input_range
        if input_range is not None:
            if lo < input_range[0] or hi > input_range[1]:
                raise UserError(f"{path}: values run {lo:g}..{hi:g}, outside --input-range {input_range[0]:g},"
                                f"{input_range[1]:g}: give the range the values were scaled from")
            pixels = "float32"
        else:
            _check_pixel_values(path, images.dtype, lo, hi)
            pixels = "float32" if np.issubdtype(images.dtype, np.floating) else "uint8"
        if masks is not None:  # a segmentation: the truth is the "masks" array (N, h, w) of class indices
            labels = None if stored_masks is None else _masks(path, stored_masks, len(images), masks, num_classes)
        elif labels is not None:
            labels = _labels(path, labels, len(images), num_classes, names, self)
        self.images, self.labels = images, labels
        super().__init__(str(path), len(images), labels is not None, pixels)
        if labels is not None and self._label_conversion:
            self.conversions[self._label_conversion] = len(images)

    def take(self, index: "slice | np.ndarray") -> np.ndarray:
        """Samples ``index`` as pixels: uint8, or float32 in 0-255 (float arrays, and any array read through
        ``input_range``)."""
        chunk = np.asarray(self.images[index])
        if self.input_range is not None:
            lo, hi = self.input_range
            self.conversions["input_range"] += len(chunk)
            return ((chunk.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.float32)
        if np.issubdtype(chunk.dtype, np.floating):
            return chunk.astype(np.float32, copy=False)  # float pixels stay floats (not rounded)
        return chunk if chunk.dtype == np.uint8 else chunk.astype(np.uint8)  # integers checked within 0-255

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:
        stop = len(self.images) if stop is None else min(stop, len(self.images))
        for first in range(start, stop, batch_size):
            images = self.take(slice(first, min(first + batch_size, stop)))
            labels = None if self.labels is None else self.labels[first : first + len(images)]
            yield Batch(images, labels, [f"array[{i}]" for i in range(first, first + len(images))], first)


def _check_pixel_dtype(path: Path, dtype: np.dtype, input_range: tuple[float, float] | None) -> None:
    if dtype.kind in "USOV":
        raise UserError(f"{path}: images are {'strings' if dtype.kind in 'US' else 'not numbers'} (dtype {dtype}), "
                        "not pixels: save numeric pixels (uint8 0-255)")
    if dtype.kind == "b" and input_range is None:
        raise UserError(f"{path}: images are bool (a mask?), not pixels: save uint8 0-255, or pass --input-range 0,1 "
                        "to read False/True as 0/255")
    if dtype.kind == "c":
        raise UserError(f"{path}: images are complex numbers (dtype {dtype}), not pixels: save uint8 0-255")


def _value_range(images: np.ndarray, chunk: int = 256) -> tuple[float, float]:
    """Min and max over the whole array, a chunk at a time (memory-mapped arrays stay on disk)."""
    if images.dtype == np.uint8:
        return 0.0, 255.0  # nothing to check: every value is a pixel
    lo, hi = np.inf, -np.inf
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start : start + chunk])
        if part.dtype.kind == "f" and not np.isfinite(part).all():
            return np.nan, np.nan
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    return lo, hi


def _check_pixel_values(path: Path, dtype: np.dtype, lo: float, hi: float) -> None:
    """Refuse values that are not 0-255 pixels, saying which --input-range would read them."""
    if dtype == np.uint8:
        return
    if dtype.kind == "f" and lo >= 0 and 0 < hi <= 1.0:
        raise UserError(f"{path}: float values {lo:g}..{hi:g} look like pixels scaled to 0-1: pass --input-range 0,1 "
                        "(or --input-range 0,255 if they really are 0-255 pixels)")
    if lo < 0 or hi > 255:
        guess = next((f"{a:g},{b:g}" for a, b in ((-1, 1), (0, 1), (0, 65535), (-128, 127), (-32768, 32767))
                      if a <= lo and hi <= b), f"{lo:g},{hi:g}")
        raise UserError(f"{path}: {dtype} values {lo:g}..{hi:g} are outside 0-255 pixels: pass --input-range LO,HI "
                        f"(the values meaning pixel 0 and 255, e.g. --input-range {guess}) or save uint8 0-255")


def _labels(path: Path, labels: np.ndarray, count: int, num_classes: int, names: list[str] | None,
            source: "ArraySource") -> np.ndarray:
    """(N,) int64 class indices from indices, label names or one-hot rows; one line for anything else."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "US":
        values = [str(v) for v in labels.reshape(-1)]
        index = {n: i for i, n in enumerate(names or [])}
        unknown = sorted(set(values) - index.keys())
        if unknown:
            raise UserError(f"{path}: labels are strings and {unknown[0]!r} is not among the model's {num_classes} "
                            "labels: store class indices 0..N-1 or the model's label names")
        source._label_conversion = "label_names"
        labels = np.array([index[v] for v in values], dtype=np.int64)
    elif labels.dtype.kind not in "iuf" and labels.dtype.kind != "b":
        raise UserError(f"{path}: labels have dtype {labels.dtype}: store class indices 0..N-1 (integers)")
    elif labels.ndim == 2 and labels.shape == (count, num_classes) and num_classes > 1:
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
            raise UserError(f"{path}: labels are {labels.shape} rows that are not one-hot: store class indices")
        source._label_conversion = "one_hot_labels"
        labels = labels.argmax(axis=1)
    elif labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise UserError(f"{path}: labels are fractional floats: store class indices 0..N-1 (integers)")
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != count:
        raise UserError(f"{path}: {len(labels)} labels for {count} images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"{path}: labels range {labels.min()}..{labels.max()}, the model has {num_classes} classes")
    return labels


def open_data(path: str | Path | None, size: tuple[int, int], class_names: Sequence[str],
              default: Path | None = None, input_range: "str | Sequence[float] | None" = None,
              use_labels: bool = True, masks: tuple[int, int] | None = None, resize: str = "stretch",
              option: str = "--data") -> DataSource:
    """A folder of images (class subfolders give labels), an .npy/.npz array, or ``default`` when None.
    ``input_range``: how an array's values map to pixels (module docstring); arrays only. ``use_labels=False``
    (calibration) ignores folder names and stored labels alike. ``masks`` = (h, w), a segmentation's output map
    size: the truth is each image's ground-truth mask instead (``<image>.mask.png`` beside it, :func:`read_mask`,
    or an .npz's ``masks`` array (N, h, w)), batches' labels (n, h, w) class indices; none: unlabelled.
    ``resize``: how images of another size or aspect are fitted (:func:`fit`). Raises :class:`UserError`
    (``option`` names the path's option in it)."""
    rng = parse_input_range(input_range)
    p = check_data(path, default, rng, use_labels and masks is None, option)
    if p.is_dir():
        return FolderSource(p, size, class_names, use_labels, masks, resize=resize)
    return ArraySource(p, size, class_names, rng, use_labels, masks)


def _masks(path: Path, masks: np.ndarray, count: int, size: tuple[int, int], classes: int) -> np.ndarray:
    """An .npz's ground-truth ``masks`` checked: (count, h, w) integers, each a class index or IGNORE_CLASS."""
    if masks.shape != (count, *size) or not np.issubdtype(masks.dtype, np.integer):
        raise UserError(f"{path}: masks have shape {masks.shape} ({masks.dtype}); expected ({count}, {size[0]}, "
                        f"{size[1]}) integer class indices, the model's output map size")
    masks = masks.astype(np.int64)
    bad = (masks < 0) | ((masks >= classes) & (masks != IGNORE_CLASS))
    if bad.any():
        raise UserError(f"{path}: masks hold {int(masks[bad][0])}, not a class index of the model's {classes} "
                        f"classes nor {IGNORE_CLASS} (ignore)")
    return masks


def check_data(path: str | Path | None, default: Path | None = None,
               input_range: "str | Sequence[float] | None" = None, use_labels: bool = True,
               option: str = "--data") -> Path:
    """What :func:`open_data` checks before it knows the model (so a caller with slow work ahead checks it first,
    issue 23, item 4): the path (``default`` when None) exists and is a folder or an .npy/.npz file, an input
    range is given for arrays only, and with ``use_labels`` a folder is flat or all class folders
    (:func:`check_flat`). Returns the path. Raises :class:`UserError`, one line; ``option`` names the path's
    option in it (``--data``, ``--calibration``)."""
    if path is None:
        if default is None:
            raise UserError(f"no {option} given, and the default images (the demo's handwritten digits) stand for the "
                            f"demo model only: pass {option} (a folder of your images or an .npy/.npz file)")
        path = default
    p = Path(path)
    if p.is_dir():
        if parse_input_range(input_range) is not None:
            raise UserError("--input-range applies to .npy/.npz arrays; images are decoded as 8-bit pixels: drop it")
        if use_labels:
            files = image_files(p)
            if not all(f.parent.parent == p for f in files):
                check_flat(p, files)
        return p
    if p.suffix.lower() in (".npy", ".npz"):
        if not p.exists():
            raise UserError(f"data file not found: {p}")
        return p
    if not p.exists():
        raise UserError(f"data not found: {p}")
    raise UserError(f"{p} is neither a folder of images nor an .npy/.npz file")
