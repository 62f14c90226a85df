"""Reconstruction fidelity of an autoencoder: PSNR, SSIM, high-frequency ratio, LPIPS, and a bicubic baseline.

Images are compared as the 8-bit pictures a user would save (rounded to uint8), so the figures are
those of the PNG files `ldm eval --save` writes. The high-frequency ratio asks whether detail the
latent grid cannot hold by resampling (frequencies above Nyquist / f) comes back: bicubic down/up loses
most of it (ratio well below 1), a blurry decoder too, a decoder that invents noise goes above 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> float in [0, 255] holding the uint8 values a saved PNG would have."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two [-1, 1] batches, measured on their 8-bit versions."""
    mse = (quantize(a) - quantize(b)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp(min=1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (scikit-image: 7x7 window, over colour channels) on the 8-bit versions."""
    qa = quantize(a).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    qb = quantize(b).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    values = [structural_similarity(x, y, channel_axis=2, data_range=255) for x, y in zip(qa, qb)]
    return torch.tensor(values, dtype=torch.float64)


def high_frequency_energy(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-image spectral energy at radial frequencies above Nyquist / factor (8-bit values, all channels)."""
    x = quantize(images) / 255.0
    h, w = x.shape[-2:]
    spectrum = torch.fft.fft2(x.double()).abs().pow(2)
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)[None, :]
    mask = torch.sqrt(fy**2 + fx**2) > 0.5 / factor
    return (spectrum * mask).sum(dim=(1, 2, 3))


def bicubic_roundtrip(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Antialiased bicubic down by `factor` then bicubic up: resampling at the autoencoder's latent size."""
    h, w = images.shape[-2:]
    return bicubic_through(images, (math.ceil(h / factor), math.ceil(w / factor)))


def bicubic_through(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic down to `size` then bicubic back to the images' size."""
    small = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


def same_numbers_side(size: int, factor: int, latent_channels: int, image_channels: int = 3) -> int:
    """Side of the RGB image that holds as many numbers as a latent_channels x (size / factor)^2 latent:
    the fair resampling baseline for a latent with more channels than the image."""
    return round(size / factor * math.sqrt(latent_channels / image_channels))


class ReconAccumulator:
    """Sums of per-image figures over batches (and ranks); the HF ratio is a ratio of summed energies."""

    NAMES = ("psnr", "ssim", "lpips")

    def __init__(self, factor: int, lpips: torch.nn.Module | None = None):
        self.factor, self.lpips = factor, lpips
        self.sums = {n: 0.0 for n in self.NAMES} | {"hf_recon": 0.0, "hf_orig": 0.0, "count": 0.0}

    @torch.no_grad()
    def add(self, original: torch.Tensor, recon: torch.Tensor) -> None:
        recon = recon.float().clamp(-1, 1)
        original = original.float()
        self.sums["psnr"] += float(psnr(original, recon).sum())
        self.sums["ssim"] += float(ssim(original, recon).sum())
        if self.lpips is not None:
            self.lpips.to(original.device)
            self.sums["lpips"] += float(self.lpips(original, quantize(recon) / 127.5 - 1).sum())
        self.sums["hf_recon"] += float(high_frequency_energy(recon, self.factor).sum())
        self.sums["hf_orig"] += float(high_frequency_energy(original, self.factor).sum())
        self.sums["count"] += original.shape[0]

    def vector(self) -> list[float]:
        return list(self.sums.values())

    def load_vector(self, values: list[float]) -> None:
        self.sums = dict(zip(self.sums, values))

    def result(self) -> dict[str, float | None]:
        n = max(self.sums["count"], 1.0)
        return {
            "psnr": self.sums["psnr"] / n,
            "ssim": self.sums["ssim"] / n,
            "hf_ratio": self.sums["hf_recon"] / max(self.sums["hf_orig"], 1e-12),
            "lpips": self.sums["lpips"] / n if self.lpips is not None else None,
        }
