"""`digits`: scikit-learn's 1,797 handwritten 8x8 digits with their class, as smooth RGB images.

Digits are white on black (ink intensity 0..16 maps to 0..255 in all three channels) and upscaled with
bicubic interpolation and a light blur, so they look like soft pen strokes rather than 8x8 blocks. The train/val split
is a fixed permutation (seed 0, one sixth val) that does not depend on --seed, so no seed can leak val
digits into training; --seed only shuffles the order within the split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
from PIL import Image

from ldmcli.data.shards import encode_png

_SPLIT_SEED = 0


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def split_indices(split: str) -> np.ndarray:
    """Indices into load_digits() of the `train` (5/6) or `val` (1/6) split, fixed for all seeds."""
    images, _ = _digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    n_val = len(images) // 6
    return np.sort(order[:n_val] if split == "val" else order[n_val:])


def upscale_digit(image: np.ndarray, size: int) -> Image.Image:
    """An 8x8 array of 0..16 ink values -> `size` x `size` RGB, white ink on black.

    Bicubic alone still shows the 8x8 grid; a Gaussian of 0.3 source pixels smooths it into strokes.
    """
    from skimage.filters import gaussian

    grey = Image.fromarray(image.astype(np.float32) * np.float32(255.0 / 16.0))
    big = gaussian(np.asarray(grey.resize((size, size), Image.Resampling.BICUBIC)), sigma=0.3 * size / 8, preserve_range=True)
    return Image.fromarray(np.clip(np.rint(big), 0, 255).astype(np.uint8)).convert("RGB")


def split_size(split: str) -> int:
    return len(split_indices(split))


def digit_samples(size: int = 32, count: int | None = None, seed: int = 0, split: str = "train") -> Iterator[dict]:
    """Up to `count` digits of the split (all by default) in an order shuffled by `seed`."""
    images, targets = _digits()
    indices = split_indices(split)
    indices = indices[np.random.default_rng(seed).permutation(len(indices))]
    for index in indices[:count]:
        yield {
            "png": encode_png(upscale_digit(images[index], size)),
            "cls": int(targets[index]),
            "json": {"source": "sklearn_digits", "split": split, "index": int(index), "label": int(targets[index])},
        }
