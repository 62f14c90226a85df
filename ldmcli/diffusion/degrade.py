"""Low-resolution inputs for super-resolution training: the paper's bicubic x4, or a blind mix of blur,
resampling, noise and JPEG at random strengths (in the spirit of BSRGAN / Real-ESRGAN), so a model
trained on it copes with real low-quality photos and not only with clean bicubic downsampling."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEGRADATIONS = ("bicubic", "blind")


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling by an integer factor (PIL's and MATLAB's imresize behaviour)."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def back_project(images: torch.Tensor, low: torch.Tensor, scale: int, iterations: int) -> torch.Tensor:
    """Iterative back-projection (Irani and Peleg, 1991): what the upscaled images' bicubic shrink misses of
    the low-resolution input is upsampled bicubically and added back, `iterations` times, until the shrink
    is the input again. Detail above the input's Nyquist frequency, which the shrink filters out, stays as
    the model drew it; the low band, which sampling and the decoder only approximate, comes from the input."""
    size = images.shape[-2:]
    for _ in range(iterations):
        miss = low - bicubic_down(images, scale)
        images = (images + F.interpolate(miss, size=size, mode="bicubic", align_corners=False)).clamp(-1, 1)
    return images


def _uniform(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """One (3, H, W) image through JPEG at `quality` and back."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    back = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)
    return (back.float() / 127.5 - 1).to(x.device)


def blind_down(x: torch.Tensor, scale: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per image: Gaussian blur (sigma 0.2-2.0, half the time), resampling by a random method, Gaussian
    noise (std 0-0.08 in [-1, 1] units, half the time), JPEG at quality 40-95 (half the time)."""
    from torchvision.transforms.functional import gaussian_blur  # at module level it cost every `ldm` command ~3 s of start-up

    out = []
    for img in x:
        img = img[None]
        if torch.rand((), generator=gen) < 0.5:
            sigma = _uniform(gen, 0.2, 2.0)
            img = gaussian_blur(img, kernel_size=2 * int(3 * sigma) + 1, sigma=sigma)
        mode = ("bicubic", "bilinear", "area")[int(torch.randint(3, (), generator=gen))]
        h, w = img.shape[-2:]
        kwargs = {"antialias": True, "align_corners": False} if mode != "area" else {}
        img = F.interpolate(img, size=(h // scale, w // scale), mode=mode, **kwargs)
        if torch.rand((), generator=gen) < 0.5:
            img = img + _uniform(gen, 0.0, 0.08) * torch.randn(img.shape, generator=gen).to(img.device)
        if torch.rand((), generator=gen) < 0.5:
            img = _jpeg(img[0], int(_uniform(gen, 40, 95)))[None]
        out.append(img.clamp(-1, 1))
    return torch.cat(out)


def degrade(x: torch.Tensor, scale: int, kind: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> (B, 3, H/scale, W/scale)."""
    return bicubic_down(x, scale) if kind == "bicubic" else blind_down(x, scale, gen)
