"""Tiled encode/decode: images larger than memory allows go through the model in overlapping tiles.

Each tile's output is weighted by a ramp that falls off towards the tile's edges (where the model saw
no context) and the weighted tiles are averaged, so seams blend instead of showing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` that overlap by at least `overlap`."""
    if tile >= length:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    last = (length - tile) // multiple * multiple
    return starts + [last] if last not in starts else starts


def ramp(n: int, width: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device, dtype=torch.float32)
    width = max(1, width)
    return torch.minimum((i + 0.5) / width, (n - i - 0.5) / width).clamp(max=1.0)


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, scale: float, multiple: int = 1) -> torch.Tensor:
    """Apply `fn` (which resizes by `scale`) tile by tile over x's last two dims and blend the results.

    `tile`, `overlap` are in x's pixels and should be multiples of `multiple` (the downsampling factor
    when encoding) so tile borders fall on latent pixels.
    """
    h, w = x.shape[-2:]
    if tile >= h and tile >= w:
        return fn(x)
    out = weight = None
    for top in tile_starts(h, tile, overlap, multiple):
        for left in tile_starts(w, tile, overlap, multiple):
            piece = fn(x[..., top : top + tile, left : left + tile]).float()
            ph, pw = piece.shape[-2:]
            if out is None:
                out = torch.zeros(*piece.shape[:-2], round(h * scale), round(w * scale), device=piece.device)
                weight = torch.zeros(round(h * scale), round(w * scale), device=piece.device)
            width = round(overlap * scale)
            wmap = ramp(ph, width, piece.device)[:, None] * ramp(pw, width, piece.device)[None, :]
            t, l = round(top * scale), round(left * scale)
            out[..., t : t + ph, l : l + pw] += piece * wmap
            weight[t : t + ph, l : l + pw] += wmap
    return out / weight


def tiled_encode(model, x: torch.Tensor, tile: int = 256, overlap: int = 32) -> torch.Tensor:
    f = model.factor
    return tiled(model.encode, x, tile, overlap, 1.0 / f, multiple=f)


def tiled_decode(model, z: torch.Tensor, tile: int = 32, overlap: int = 8) -> torch.Tensor:
    """`tile` and `overlap` in latent pixels."""
    return tiled(model.decode, z, tile, overlap, float(model.factor))
