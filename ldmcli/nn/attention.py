"""Attention for the diffusion UNet: multi-head (cross-)attention (SDPA, or plain matmuls on the CPU), GEGLU feed-forward,
and the paper's SpatialTransformer.

Feature maps are turned into tokens with permute + reshape, which is free when the tensor is
channels_last, and the result is permuted back without a copy, so a channels_last UNet stays so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.nn.blocks import norm, zero_module
from ldmcli.nn.embeddings import position_encoding_2d
from ldmcli.nn.functional import attention


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Attention(nn.Module):
    """Multi-head attention of x's tokens over a context (cross) or over themselves (context None)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(ctx)), self._split(self.to_v(ctx))
        out = attention(q, k, v)
        b, _, n, _ = out.shape
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(b, n, -1)))


class GEGLU(nn.Module):
    """Linear to twice the width, then value * GELU(gate) (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context (if any), GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.attn2 = Attention(dim, heads, head_dim, context_dim, dropout) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            if context is None:
                raise ValueError("this transformer block cross-attends and needs a context")
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> linear in -> transformer blocks over the h*w tokens -> zero-initialised linear out.

    position_encoding adds fixed 2-D sin-cos features of each token's place in the image after the linear
    in: convolutions only see relative position, so without it cross-attention cannot tie a layout box's
    coordinates to where its object is drawn (objects then land mirrored about as often as in place)."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int = 1, context_dim: int | None = None, dropout: float = 0.0,
                 position_encoding: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.position_encoding = position_encoding
        self.norm = norm(channels)
        self.proj_in = nn.Linear(channels, inner)
        self.blocks = nn.ModuleList(TransformerBlock(inner, heads, head_dim, context_dim, dropout) for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(inner, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.proj_in(_to_tokens(self.norm(x)))
        if self.position_encoding:
            tokens = tokens + position_encoding_2d(h, w, tokens.shape[-1], tokens.device).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, context)
        return x + _to_map(self.proj_out(tokens), h, w)


class AttentionBlock(nn.Module):
    """Plain multi-head self-attention over a feature map (the LDM UNet's block when there is no context)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(_to_tokens(self.norm(x))).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + _to_map(self.proj_out(out), h, w)
