"""Random inpainting masks for training (1 = to generate, 0 = keep): the mix LaMa and SD-inpainting
train on, so one model handles a box, a scribble or most of the picture."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

# share of each kind in a batch: boxes, thick strokes, large irregular blobs, nothing masked, all masked
KINDS = {"box": 0.3, "strokes": 0.3, "irregular": 0.25, "keep": 0.075, "all": 0.075}


def _box(rng: np.random.Generator, size: int, draw: ImageDraw.ImageDraw) -> None:
    for _ in range(int(rng.integers(1, 3))):
        w, h = (int(rng.uniform(0.15, 0.6) * size) for _ in range(2))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=255)


def _strokes(rng: np.random.Generator, size: int, draw: ImageDraw.ImageDraw, max_width: float) -> None:
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0, size, 2)
        width = max(2, int(rng.uniform(0.05, max_width) * size))
        for _ in range(int(rng.integers(2, 6))):
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * size
            nx, ny = float(np.clip(x + length * math.cos(angle), 0, size)), float(np.clip(y + length * math.sin(angle), 0, size))
            draw.line([x, y, nx, ny], fill=255, width=width)
            r = width / 2
            draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)
            x, y = nx, ny


def random_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size) float mask of a randomly chosen kind."""
    kind = rng.choice(list(KINDS), p=list(KINDS.values()))
    if kind in ("keep", "all"):
        return np.full((size, size), float(kind == "all"), dtype=np.float32)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "box":
        _box(rng, size, draw)
    else:  # irregular: many wide strokes that merge into large regions
        _strokes(rng, size, draw, 0.12 if kind == "strokes" else 0.35)
        if kind == "irregular":
            _strokes(rng, size, draw, 0.35)
    return (np.asarray(canvas) > 127).astype(np.float32)


def random_masks(n: int, size: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """(n, 1, size, size) masks seeded from torch's generator (the global one by default, which a resumed
    run restores, so it draws the same masks)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=gen)))
    return torch.from_numpy(np.stack([random_mask(rng, size) for _ in range(n)]))[:, None]
