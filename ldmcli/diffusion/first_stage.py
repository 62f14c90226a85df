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
def channel_moments(latents: Iterable[torch.Tensor], what: str, max_images: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of latent batches (B, C, ...) over up to `max_images` images (not
    just the first batch)."""
    total, sq, n, images = 0.0, 0.0, 0, 0
    for z in latents:
        images += len(z)
        z = z.double().transpose(0, 1).flatten(1)
        total, sq, n = total + z.sum(1), sq + z.square().sum(1), n + z.shape[1]
        if images >= max_images:
            break
    if n == 0:
        raise UserError(f"no images to measure {what} on")
    mean = total / n
    return mean.tolist(), (sq / n - mean.square()).tolist()


def scale_from_moments(mean: list[float], var: list[float], centred: bool) -> float:
    """1 / std of the latents: within channels when each channel is centred, else around the overall mean."""
    m, v = torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)
    total = v.mean() if centred else (v + m.square()).mean() - m.mean().square()
    return 1.0 / max(float(total.sqrt()), 1e-8)
