"""Images from disk, the one way every stage reads them.

Resize policy (one, documented): the image is converted to RGB (grayscale and RGBA too; alpha is dropped) and
resized to the model's input size with bilinear filtering, without cropping. A folder's class subfolders give
the labels, in sorted order unless the model's label list names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgeship.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray | None  # (N,) int class indices, or None when the folder has no class subfolders
    paths: list[Path]


def image_files(root: Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB at ``size`` = (height, width)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


def load_image_folder(root: Path, size: tuple[int, int], class_names: Sequence[str] | None = None) -> ImageSet:
    """All images under ``root`` in memory; ``root/<class>/<image>`` gives labels (see :class:`FolderSource`)."""
    source = FolderSource(root, size, class_names)
    batches = list(source.batches(256))
    labels = None if source.labels is None else np.concatenate([b.labels for b in batches])  # type: ignore[misc]
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
    """Samples streamed in batches, so 50,000 images never need 50,000 images of memory at once."""

    def __init__(self, source: str, count: int, labeled: bool, pixels: str = "uint8") -> None:
        self.source, self.count, self.labeled = source, count, labeled
        self.pixels = pixels  # "uint8" (raw images) or "float32" (float pixels, not rounded)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:  # pragma: no cover - abstract
        """Batches of ``batch_size`` over samples ``start`` to ``stop`` (default: the end): a shard of the set.
        With ``skip_bad``, a sample that cannot be read is left out of its batch and listed in ``Batch.failed``
        with its reason (else it raises :class:`UserError`)."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": self.count, "labeled": self.labeled, "pixels": self.pixels}


class FolderSource(DataSource):
    def __init__(self, root: Path, size: tuple[int, int], class_names: Sequence[str] | None) -> None:
        self.root, self.size = Path(root), size
        self.files = image_files(self.root)
        labeled = all(f.parent.parent == self.root for f in self.files)
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

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:
        stop = len(self.files) if stop is None else min(stop, len(self.files))
        for first in range(start, stop, batch_size):
            files = self.files[first : min(first + batch_size, stop)]
            sources = [f.relative_to(self.root).as_posix() for f in files]
            labels = None if self.labels is None else self.labels[first : first + len(files)]
            if not skip_bad:
                yield Batch(np.stack([read_image(f, self.size) for f in files]), labels, sources, first)
                continue
            images, kept, failed = [], [], []
            for j, f in enumerate(files):
                try:
                    images.append(read_image(f, self.size))
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


class ArraySource(DataSource):
    """``.npy`` (images) or ``.npz`` (``images`` or ``x``, optional ``labels`` or ``y``): RGB pixels in 0-255,
    (N, H, W, 3) at the model's input size. ``.npy`` files are memory-mapped.

    uint8 (or other integer) arrays are raw pixels, batched as uint8; float arrays are float pixels (0-255, e.g.
    after resizing or augmentation), batched as float32 and not rounded, so the reference sees them exactly and an
    8-bit-input artifact is fed them normalised and re-quantised (:meth:`edgeship.runtimes.runner.Runner.feed`)."""

    def __init__(self, path: Path, size: tuple[int, int], num_classes: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        try:
            if path.suffix == ".npy":
                images, labels = np.load(path, mmap_mode="r", allow_pickle=False), None
            else:
                with np.load(path, allow_pickle=False) as z:
                    key = next((k for k in ("images", "x") if k in z), None)
                    if key is None:
                        raise UserError(f"{path} has arrays {sorted(z.files)}; name the images 'images' (or 'x')")
                    images = z[key]
                    lkey = next((k for k in ("labels", "y") if k in z), None)
                    labels = z[lkey] if lkey else None
        except (ValueError, OSError) as e:
            raise UserError(f"cannot read {path} as a NumPy array: {e}") from None
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"{path}: images have shape {images.shape}; expected (N, height, width, 3) RGB")
        if tuple(images.shape[1:3]) != tuple(size):
            raise UserError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, the model takes "
                            f"{size[0]}x{size[1]}; resize them first")
        if len(images) == 0:
            raise UserError(f"{path} holds no images")
        if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
            raise UserError(f"{path}: images contain NaN or Inf")
        if labels is not None:
            labels = np.asarray(labels).astype(np.int64).reshape(-1)
            if len(labels) != len(images):
                raise UserError(f"{path}: {len(labels)} labels for {len(images)} images")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise UserError(f"{path}: labels range {labels.min()}..{labels.max()}, the model has {num_classes} "
                                "classes")
        self.images, self.labels = images, labels
        super().__init__(str(path), len(images), labels is not None,
                         "float32" if np.issubdtype(images.dtype, np.floating) else "uint8")

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                skip_bad: bool = False) -> Iterator[Batch]:
        stop = len(self.images) if stop is None else min(stop, len(self.images))
        for start in range(start, stop, batch_size):
            chunk = np.asarray(self.images[start : min(start + batch_size, stop)])
            if np.issubdtype(chunk.dtype, np.floating):
                images = chunk.astype(np.float32, copy=False)  # float pixels stay floats (not rounded)
            else:
                images = chunk if chunk.dtype == np.uint8 else np.clip(chunk, 0, 255).astype(np.uint8)
            labels = None if self.labels is None else self.labels[start : start + len(chunk)]
            yield Batch(images, labels, [f"array[{i}]" for i in range(start, start + len(chunk))], start)


def open_data(path: str | Path | None, size: tuple[int, int], class_names: Sequence[str],
              default: Path | None = None) -> DataSource:
    """A folder of images (class subfolders give labels), an .npy/.npz array, or ``default`` when None."""
    if path is None:
        if default is None:
            raise UserError("no data given: pass --data (a folder of images or an .npy/.npz file)")
        path = default
    p = Path(path)
    if p.is_dir():
        return FolderSource(p, size, class_names)
    if p.suffix.lower() in (".npy", ".npz"):
        return ArraySource(p, size, len(class_names))
    if not p.exists():
        raise UserError(f"data not found: {p}")
    raise UserError(f"{p} is neither a folder of images nor an .npy/.npz file")
