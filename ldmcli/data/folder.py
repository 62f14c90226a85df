"""Turn any folder of images into samples: optional captions from `NAME.txt`, classes from sub-folders.

PNG and JPEG files are stored as their original bytes (no re-encoding loss); other formats, and every
image when resizing, are stored as PNG. A file PIL cannot decode is skipped and remembered, never fatal:
one bad file must not stop the import of a million good ones.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ldmcli.data.shards import encode_png
from ldmcli.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
_KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg"}


def find_images(root: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path; `exclude` (the --out dir) skipped."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in root.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def class_names(root: Path, images: list[Path]) -> list[str] | None:
    """Sorted sub-folder names when every image lives under an immediate sub-folder, else None."""
    parts = [p.relative_to(root).parts for p in images]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    return sorted({p[0] for p in parts})


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the centre `size` x `size`."""
    return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _image_entry(data: bytes, size: int | None) -> tuple[str, bytes, tuple[int, int]]:
    """(suffix, bytes, original size) for one file; raises on anything PIL cannot fully decode."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        fmt, original = img.format, img.size
        if size is None and fmt in _KEPT_FORMATS:
            return _KEPT_FORMATS[fmt], data, original
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        if size is not None:
            img = resize_center_crop(img.convert("RGB"), size)
        return "png", encode_png(img), original


class FolderSet:
    """The images of one folder as samples, in sorted order shuffled by `seed`.

    The shuffle mixes classes across shards (sorted order would put each class in its own shards); the
    same seed always gives the same order. `skipped` lists the files that could not be decoded.
    """

    def __init__(self, root: Path, size: int | None = None, count: int | None = None, seed: int = 0, exclude: Path | None = None):
        if not root.is_dir():
            raise UserError(f"{root} is not a folder")
        self.root, self.size = root, size
        self.images = find_images(root, exclude)
        if not self.images:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
        self.classes = class_names(root, self.images)
        order = np.random.default_rng(seed).permutation(len(self.images))
        self.images = [self.images[i] for i in order[:count]]
        self.skipped: list[Path] = []

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[dict]:
        index = {name: i for i, name in enumerate(self.classes or [])}
        for path in self.images:
            rel = path.relative_to(self.root)
            try:
                suffix, data, (width, height) = _image_entry(path.read_bytes(), self.size)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError):
                self.skipped.append(path)
                continue
            sample = {suffix: data, "json": {"source": rel.as_posix(), "width": width, "height": height}}
            caption = path.with_suffix(".txt")
            if caption.is_file():
                sample["txt"] = caption.read_text(encoding="utf-8", errors="replace").strip()
            if self.classes is not None:
                sample["cls"] = index[rel.parts[0]]
                sample["json"]["class"] = rel.parts[0]
            yield sample
