"""The first stage seen from the diffusion model: encode images to unscaled latents and decode back.

Pixel space (the paper's LDM-1) is the identity with factor 1, so one code path trains both.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ldmcli.errors import UserError


class IdentityFirstStage(nn.Module):
    factor = 1
    latent_channels = 3

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def load_first_stage(ae_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """An autoencoder model dir, or the identity when `ae_dir` is empty."""
    if not str(ae_dir):
        return IdentityFirstStage()
    from ldmcli.autoencoder import load_autoencoder

    return load_autoencoder(Path(ae_dir), device)


@torch.no_grad()
def measure_scale(latents: Iterable[torch.Tensor], what: str, max_images: int = 512) -> float:
    """1 / std of latent batches over up to `max_images` images (not just the first batch)."""
    total, sq, n = 0.0, 0.0, 0
    for z in latents:
        z = z.double()
        total, sq, n = total + z.sum().item(), sq + z.square().sum().item(), n + z.numel()
        if n >= max_images * z[0].numel():
            break
    if n == 0:
        raise UserError(f"no images to measure {what} on")
    std = (sq / n - (total / n) ** 2) ** 0.5
    return 1.0 / max(std, 1e-8)
