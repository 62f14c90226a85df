"""Sinusoidal embeddings: of the timestep (the UNet's only notion of noise level before its MLP) and of
a token's place in the image (for attention that must know where it is)."""

from __future__ import annotations

import functools
import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps (integer or fractional) -> (B, dim) float32 [cos | sin], as in the LDM code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@functools.lru_cache(maxsize=32)
def position_encoding_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(h * w, dim) fixed sin-cos features of each cell's centre as a fraction of the map (x in the first
    half, y in the second), so a token knows where in the image it sits whatever the resolution. Cached:
    every attention layer of every step asks for the same few maps."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(100.0) * torch.arange(quarter, dtype=torch.float32, device=device) / max(quarter, 1)) * math.pi * 16
    ys = ((torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h)[:, None] * freqs
    xs = ((torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w)[:, None] * freqs
    y = torch.cat([ys.sin(), ys.cos()], -1)[:, None, :].expand(h, w, 2 * quarter)
    x = torch.cat([xs.sin(), xs.cos()], -1)[None, :, :].expand(h, w, 2 * quarter)
    pe = torch.cat([x, y], -1).reshape(h * w, 4 * quarter)
    return torch.nn.functional.pad(pe, (0, dim - 4 * quarter))
