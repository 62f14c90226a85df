"""The LDM UNet (CompVis `openaimodel.UNetModel` layout): ResBlocks with a timestep embedding, attention
at chosen downsampling factors, skip connections, fully convolutional.

Conditioning enters three ways: `context` tokens for cross-attention, `y` (a vector the size of the
time embedding, e.g. a class embedding) added to the time embedding, and extra input channels that the
caller concatenates to x (super-resolution, inpainting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmcli.nn.attention import AttentionBlock, SpatialTransformer
from ldmcli.nn.blocks import Downsample, ResBlock, Upsample, conv_layout, norm, zero_module
from ldmcli.nn.embeddings import timestep_embedding


@dataclass
class UNetConfig:
    """Widths are multiples of model_channels; attention_levels are downsampling factors (1 = full size).

    in_channels/out_channels 0 mean "the first stage's latent channels" and are filled in at build time;
    concat_channels are extra inputs given as `concat` (a low-resolution image, a mask and masked latent).
    num_levels > 0 embeds an integer `level` into the time embedding: the noise-augmentation level of a
    super-resolution model's low-resolution input (as diffusers' x4 upscaler). Heads: head_dim > 0 fixes the width per
    head (heads = channels // head_dim), else num_heads heads of channels // num_heads each.
    attention "transformer" is the paper's SpatialTransformer (needed for a context); "plain" is the
    single self-attention block of its unconditional models. position_encoding (transformer attention)
    tells its tokens where in the image they are: what a layout model needs to put objects in their boxes.
    """

    in_channels: int = 0
    out_channels: int = 0
    concat_channels: int = 0
    model_channels: int = 64
    channel_mult: list[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: list[int] = (2, 4)
    attention: Literal["transformer", "plain"] = "transformer"
    num_heads: int = 4
    head_dim: int = 0
    transformer_depth: int = 1
    context_dim: int = 0
    dropout: float = 0.0
    scale_shift: bool = True
    num_levels: int = 0
    position_encoding: bool = False


class _Stage(nn.ModuleList):
    """A ResBlock, attention and/or resampling layer run in order, each given what it needs."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, (SpatialTransformer, AttentionBlock)):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if cfg.in_channels <= 0 or cfg.out_channels <= 0:
            raise ValueError("UNetConfig.in_channels/out_channels must be resolved before building")
        if cfg.attention == "plain" and cfg.context_dim:
            raise ValueError("plain attention cannot use a context; use attention = 'transformer'")
        self.cfg = cfg
        mc = cfg.model_channels
        self.time_embed_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, self.time_embed_dim), nn.SiLU(), nn.Linear(self.time_embed_dim, self.time_embed_dim))
        self.level_embed = nn.Embedding(cfg.num_levels, self.time_embed_dim) if cfg.num_levels else None
        self.grad_checkpointing = False

        def res(c_in: int, c_out: int) -> ResBlock:
            block = ResBlock(c_in, c_out, self.time_embed_dim, cfg.dropout, cfg.scale_shift, eps=1e-5)
            zero_module(block.conv2)
            return block

        def attn(c: int) -> nn.Module:
            heads = c // cfg.head_dim if cfg.head_dim > 0 else cfg.num_heads
            if cfg.attention == "plain":
                return AttentionBlock(c, heads)
            return SpatialTransformer(c, heads, c // heads, cfg.transformer_depth, cfg.context_dim or None, cfg.dropout, cfg.position_encoding)

        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.concat_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_levels:
                    layers.append(attn(ch))
                self.down.append(_Stage(layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(_Stage([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle = _Stage([res(ch, ch), attn(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_levels:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.up.append(_Stage(layers))
        self.norm_out = norm(ch, eps=1e-5)
        self.conv_out = zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        self.size_multiple = 2 ** (len(cfg.channel_mult) - 1)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute each stage's activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = enabled

    def _run(self, stage: _Stage, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, emb, context, use_reentrant=False)
        return stage(conv_layout(x), emb, context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None,
                concat: torch.Tensor | None = None, level: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) with H, W multiples of size_multiple; t (B,) timesteps; concat (B, concat_channels,
        H, W); level (B,) integers below num_levels; returns (B, out, H, W)."""
        if (concat is None) != (not self.cfg.concat_channels):
            raise ValueError(f"this UNet takes {self.cfg.concat_channels} concat channels, got {None if concat is None else concat.shape[1]}")
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(f"UNet input {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        emb = timestep_embedding(t.expand(x.shape[0]) if t.ndim == 0 else t, self.cfg.model_channels)
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + y
        if self.level_embed is not None:
            emb = emb + self.level_embed(level.long().expand(x.shape[0]) if level is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        h = self.conv_in(conv_layout(x if concat is None else torch.cat([x, concat.to(x.dtype)], dim=1)))
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context)
            hs.append(h)
        h = self._run(self.middle, h, emb, context)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.conv_out(F.silu(self.norm_out(h)))
