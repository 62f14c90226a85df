"""Attention arithmetic shared by the UNet's and the autoencoder's attention blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this many attention weights per head the math path's (Nq x Nk) matrix costs more memory than
# it saves time; SDPA's memory-efficient kernels take over.
_MATH_MAX_WEIGHTS = 1 << 20


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (..., N, d) tensors. On the CPU, for the short sequences of a
    latent UNet, two matmuls and a softmax train much faster than SDPA's flash kernel, whose backward
    pass dominated the step (`python bench/unet_train.py` measures the step). GPUs and long sequences
    keep SDPA."""
    if q.device.type != "cpu" or q.shape[-2] * k.shape[-2] > _MATH_MAX_WEIGHTS:
        return F.scaled_dot_product_attention(q, k, v)
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return weights.softmax(-1).to(v.dtype) @ v
