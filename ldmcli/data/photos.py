"""`photos`: random square crops of the real photographs shipped inside scikit-image and scikit-learn.

Train crops come only from scikit-image's photographs and grey textures; `val` crops come only from
scikit-learn's china.jpg and flower.jpg, which are held out so that evaluation sees unseen photos.
Each crop side is drawn log-uniformly between the output size and the photo's shorter side, then
resized to the output size: small sides give texture, large sides give whole objects. Nearly flat crops
are redrawn.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from ldmcli.data.shards import encode_png

TRAIN_SOURCES = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "brick", "grass", "gravel", "camera", "moon", "coins",
)
VAL_SOURCES = ("china", "flower")
# `cls` is the crop's source photo: a classifier of it gives photos a domain feature space (FID-photos)
SOURCES = TRAIN_SOURCES + VAL_SOURCES
_FLAT_STD = 3.0  # crops flatter than this (retina's black corners, empty sky) teach nothing; redraw
_TRIES = 10


@functools.cache
def load_photo(name: str) -> Image.Image:
    """One source photograph as an RGB PIL image (grey textures are replicated to three channels)."""
    if name in VAL_SOURCES:
        from sklearn.datasets import load_sample_image

        array = load_sample_image(f"{name}.jpg")
    elif name in TRAIN_SOURCES:
        import skimage.data

        array = getattr(skimage.data, name)()
    else:
        raise KeyError(name)
    return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")


def crop_box(rng: np.random.Generator, width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """A random square box (x0, y0, x1, y1) whose side is log-uniform in [size, shorter side]."""
    short = min(width, height)
    low = min(size, short)
    side = int(round(math.exp(rng.uniform(math.log(low), math.log(short)))))
    side = max(low, min(short, side))
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(0, height - side + 1))
    return x0, y0, x0 + side, y0 + side


def photo_samples(size: int = 64, count: int = 10000, seed: int = 0, split: str = "train") -> Iterator[dict]:
    """`count` crops of `size` x `size`; sample i depends only on (seed, split, i), so a smaller
    --count gives a prefix of a larger one."""
    sources = VAL_SOURCES if split == "val" else TRAIN_SOURCES
    split_id = 1 if split == "val" else 0
    for index in range(count):
        rng = np.random.default_rng([seed, split_id, index])
        for _ in range(_TRIES):
            source = sources[int(rng.integers(len(sources)))]
            photo = load_photo(source)
            box = crop_box(rng, photo.width, photo.height, size)
            crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=box)
            if np.asarray(crop).std() >= _FLAT_STD:
                break
        flip = bool(rng.integers(2))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield {
            "png": encode_png(crop),
            "cls": SOURCES.index(source),
            "json": {"source": source, "split": split, "box": list(box), "flip": flip},
        }
