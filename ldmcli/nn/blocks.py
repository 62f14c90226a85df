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


# In inference, oneDNN's CPU convolutions skip a reorder of every output on channels-last maps, which
# pays from about 32x32 on (`python bench/autoencoder.py` shows it as the decode ratio against diffusers);
# smaller maps run faster in NCHW. With gradients, channels-last GroupNorm and convolution backward are
# slower, so training keeps NCHW.
_CHANNELS_LAST_MIN_PIXELS = 1024


def channels_last_fits(device: torch.device, pixels: int) -> bool:
    return device.type == "cpu" and not torch.is_grad_enabled() and pixels >= _CHANNELS_LAST_MIN_PIXELS


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """x in the memory format its convolutions run fastest in on this device (CPU: by map size)."""
    if channels_last_fits(x.device, x.shape[-2] * x.shape[-1]):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


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


# From this many input pixels on, the sub-pixel form of upsample-then-conv is faster on the CPU (it skips
# 20 of 36 multiply-adds); below it the fixed cost of its extra ops dominates.
# GPUs keep interpolate + conv, the form measured there by everyone else.
_SUBPIXEL_MIN_PIXELS = 256


def _subpixel_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """A 3-tap kernel axis seen from the low-resolution grid: output parity 0 reads rows (i-1, i) with taps
    (w0, w1+w2), parity 1 reads rows (i, i+1) with (w0+w1, w2); the parities are stacked first."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest_upsample_2x(x)) without the upsampled input: each of the four output parities is a
    2x2 conv of x, so the same result costs 16/36 of the multiply-adds (exact up to rounding)."""
    b, _, h, w = x.shape
    o = weight.shape[0]
    rows = _subpixel_taps(weight, 2)  # (2, O, C, 2, 3)
    taps = _subpixel_taps(rows, 4).permute(1, 0, 2, 3, 4, 5)  # (2 row parities, 2 col parities, O, C, 2, 2)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), taps.flatten(0, 2), None if bias is None else bias.repeat(4))
    y = y.unflatten(1, (2, 2, o))
    channels_last = channels_last_fits(x.device, 4 * h * w)
    if channels_last:
        buf = y.new_empty(b, h, 2, w, 2, o)
        out = buf.permute(0, 5, 1, 2, 3, 4)
    else:
        buf = out = y.new_empty(b, o, h, 2, w, 2)
    for pr in (0, 1):
        for pc in (0, 1):
            out[:, :, :, pr, :, pc] = y[:, pr, pc, :, pr : pr + h, pc : pc + w]
    if channels_last:
        return buf.view(b, 2 * h, 2 * w, o).permute(0, 3, 1, 2)
    return buf.view(b, o, 2 * h, 2 * w)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= _SUBPIXEL_MIN_PIXELS:
            return upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


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
