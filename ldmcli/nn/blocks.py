"""Convolutional building blocks shared by the autoencoder and the diffusion UNet.

The layouts follow the LDM code (GroupNorm(32) + SiLU ResBlocks, single-head spatial self-attention in
the autoencoder) so that CompVis and diffusers weights map onto them one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.nn.functional import attention


def norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide the channels (32 for the paper's widths)."""
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=eps, affine=True)


def zero_module(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero so a deep stack begins as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """norm-SiLU-conv twice with a skip; optional embedding added (or scale-shift) between them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int = 0,
        dropout: float = 0.0,
        scale_shift: bool = False,
        eps: float = 1e-6,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = norm(in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = scale_shift
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)) if emb_channels else None
        self.norm2 = norm(out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is not None:
            e = self.emb_proj(F.silu(emb))[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv; `pad_asymmetric` reproduces the autoencoder's (0, 1, 0, 1) padding."""

    def __init__(self, channels: int, out_channels: int | None = None, pad_asymmetric: bool = False):
        super().__init__()
        self.pad_asymmetric = pad_asymmetric
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=0 if pad_asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """F.interpolate(x, scale_factor=2, mode="nearest") as one strided copy: interpolate's CPU kernel is
    several times slower, enough to show in an autoencoder decoder's profile."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest2x(x))


class SelfAttention2d(nn.Module):
    """Single-head attention over all positions of a feature map, through SDPA."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = norm(channels, eps=eps)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))
