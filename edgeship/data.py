"""Images from disk, the one way every stage reads them.

Resize policy (one, documented): the image is converted to RGB (grayscale and RGBA too; alpha is dropped) and
resized to the model's input size with bilinear filtering, without cropping. A folder's class subfolders give
the labels, in sorted order unless the model's label list names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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


def load_image_folder(root: Path, size: tuple[int, int], class_names: Sequence[str] | None = None,
                      limit: int | None = None) -> ImageSet:
    """All images under ``root``; ``root/<class>/<image>`` gives labels, matched to ``class_names`` when given."""
    root = Path(root)
    files = image_files(root)[: limit or None]
    parents = {f.parent for f in files}
    labels = None
    if all(p.parent == root for p in parents):
        names = list(class_names) if class_names else sorted(p.name for p in parents)
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({f.parent.name for f in files} - index.keys())
        if unknown:
            raise UserError(f"class folders {unknown[:5]} in {root} are not among the model's labels")
        labels = np.array([index[f.parent.name] for f in files], dtype=np.int64)
    images = np.stack([read_image(f, size) for f in files])
    return ImageSet(images=images, labels=labels, paths=files)
