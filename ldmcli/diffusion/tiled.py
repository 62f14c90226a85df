"""Denoising a latent canvas larger than the UNet should see at once, in overlapping tiles (MultiDiffusion,
Bar-Tal et al. 2023): at every step each tile is denoised with its crop of the image conditioning and the
predictions are blended with ramps that fade towards tile edges. Tiles agree at every step instead of
being sampled apart and stitched, so no seam shows; super-resolution and inpainting of large images
stay within memory."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldmcli.autoencoder.tiling import ramp, tile_starts
from ldmcli.diffusion.samplers import Denoiser

# (window (top, left, height, width)) -> the denoiser for that window
WindowDenoiser = Callable[[tuple[int, int, int, int]], Denoiser]


def windows(h: int, w: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Tile windows covering an (h, w) canvas; tile borders on multiples of `multiple`."""
    return [(top, left, min(tile, h), min(tile, w))
            for top in tile_starts(h, tile, overlap, multiple) for left in tile_starts(w, tile, overlap, multiple)]


def tiled_denoiser(for_window: WindowDenoiser, shape: tuple[int, ...], tile: int, overlap: int, multiple: int,
                   on_tile: Callable[[], None] | None = None) -> tuple[Denoiser, int]:
    """(a denoiser for the whole canvas of `shape`, the number of tiles it runs per call)."""
    h, w = shape[-2:]
    wins = windows(h, w, tile, overlap, multiple)
    if len(wins) == 1:
        whole = for_window(wins[0])

        def single(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = whole(x, t)
            if on_tile:
                on_tile()
            return out

        return single, 1
    parts = [(win, for_window(win)) for win in wins]

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape, device=x.device)
        weight = torch.zeros(h, w, device=x.device)
        for (top, left, th, tw), fn in parts:
            wmap = ramp(th, overlap, x.device)[:, None] * ramp(tw, overlap, x.device)[None, :]
            out[..., top:top + th, left:left + tw] += fn(x[..., top:top + th, left:left + tw], t).float() * wmap
            weight[top:top + th, left:left + tw] += wmap
            if on_tile:
                on_tile()
        return out / weight

    return denoise, len(wins)
