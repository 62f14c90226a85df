"""Image-conditioned tasks: what the UNet's extra input channels hold for super-resolution (the
low-resolution image on the latent grid, as the paper's SR model and diffusers' LDMSuperResolution
pipeline) and for inpainting (the mask at latent size and the masked image's latent, as the paper's and
SD's inpainting models). Training and sampling build these inputs with the same functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ldmcli.diffusion.degrade import DEGRADATIONS, degrade
from ldmcli.diffusion.masks import random_masks
from ldmcli.errors import UserError

TASKS = ("generate", "sr", "inpaint")


@dataclass
class TaskConfig:
    """kind: generate (from noise, steered by the conditioner only), sr or inpaint.

    sr: `scale` is the upscaling factor, `degradation` bicubic (the paper's) or blind (blur, noise,
    JPEG); noise_levels > 0 adds Gaussian noise to the low-resolution input at a random level below
    noise_levels during training (level k keeps sqrt(alpha_bar_k) of the signal on a linear 1e-4..0.02
    schedule over 1000 steps, as diffusers' x4 upscaler) and tells the UNet the level, so at sampling a
    small level hides the input's artefacts.

    residual (sr): the model denoises the difference between the target's latent and the latent of the
    low-resolution input upsampled bicubically, times residual_scale (1 / its std, measured before training
    when 0), and sampling adds that latent back. The low frequencies then come from the input, which an
    autoencoder with residual shortcuts carries almost unchanged into its latent (the difference is a few
    percent of the latent's std), so the model spends its capacity on the detail the input lacks.

    input_guidance, guidance_from (sr with noise levels): the defaults of `ldm upscale --input-guidance` and
    `--guidance-from` for this model; sampling only, training ignores them.

    back_projection (sr, bicubic degradation): the default of `ldm upscale --back-projection`, the iterations
    of back-projection onto the input after decoding (0: none); sampling only.
    """

    kind: Literal["generate", "sr", "inpaint"] = "generate"
    scale: int = 4
    degradation: Literal["bicubic", "blind"] = "bicubic"
    noise_levels: int = 0
    residual: bool = False
    residual_scale: float = 0.0
    input_guidance: float = 1.0
    guidance_from: float = 0.0
    back_projection: int = 0


def check(task: TaskConfig) -> None:
    if task.kind not in TASKS:
        raise UserError(f"unknown task '{task.kind}' (choose from {', '.join(TASKS)})")
    if task.kind == "sr":
        if task.scale < 2:
            raise UserError(f"task.scale must be at least 2, got {task.scale}")
        if task.degradation not in DEGRADATIONS:
            raise UserError(f"unknown task.degradation '{task.degradation}' (choose from {', '.join(DEGRADATIONS)})")
    if task.residual and task.kind != "sr":
        raise UserError(f"task.residual is for super-resolution (task.kind = 'sr'), not '{task.kind}'")
    if task.residual_scale < 0:
        raise UserError(f"task.residual_scale must be positive (0: measured), got {task.residual_scale}")
    if not 0 <= task.noise_levels <= 1000:
        raise UserError(f"task.noise_levels must lie in [0, 1000], got {task.noise_levels}")
    if task.input_guidance != 1.0 and (task.kind != "sr" or not task.noise_levels or task.input_guidance < 0):
        raise UserError(f"task.input_guidance {task.input_guidance:g} needs task.kind = 'sr' with noise levels and a value >= 0 (1: off)")
    if not 0 <= task.guidance_from < 1:
        raise UserError(f"task.guidance_from must be in [0, 1), got {task.guidance_from:g}")
    if task.back_projection and (task.kind != "sr" or task.degradation != "bicubic" or task.back_projection < 0):
        raise UserError(f"task.back_projection {task.back_projection} needs task.kind = 'sr' with the bicubic degradation "
                        "(the blind mix's inputs are not the bicubic shrink of the image) and a value >= 0 (0: off)")


def concat_channels(task: TaskConfig, latent_channels: int) -> int:
    return {"generate": 0, "sr": 3, "inpaint": latent_channels + 1}[task.kind]


def _level_alpha_bar(levels: torch.Tensor) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[levels.cpu()].float().to(levels.device)


def sr_inputs(low: torch.Tensor, latent_hw: tuple[int, int], level: torch.Tensor | None = None,
              gen: torch.Generator | None = None) -> dict:
    """UNet inputs for low-resolution images (B, 3, h, w) in [-1, 1]: resized to the latent grid and, with
    `level`, noised to that augmentation level."""
    if tuple(low.shape[-2:]) != tuple(latent_hw):
        low = F.interpolate(low, size=latent_hw, mode="bicubic", align_corners=False).clamp(-1, 1)
    if level is None:
        return {"concat": low}
    abar = _level_alpha_bar(level).view(-1, 1, 1, 1)
    noisy = abar.sqrt() * low + (1 - abar).sqrt() * torch.randn(low.shape, generator=gen).to(low.device)
    return {"concat": noisy, "level": level}


def sr_base(low: torch.Tensor, size: tuple[int, int], encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """What a residual super-resolution model's output is added to: the (scaled) latent of the
    low-resolution images upsampled bicubically to the output size."""
    up = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    return encode(up).float()


def from_residual(task: TaskConfig, z: torch.Tensor, low: torch.Tensor, size: tuple[int, int],
                  encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A residual super-resolution model's sample back to a latent: unscaled, plus the input's latent."""
    return z / task.residual_scale + sr_base(low, size, encode)


def inpaint_inputs(image: torch.Tensor, mask: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """UNet inputs for images in [-1, 1] and masks (B, 1, H, W), 1 = generate: the mask on the latent grid
    and the (scaled) latent of the image with the masked part set to grey. A latent cell is to be generated
    when any of its pixels is (max-pooling: nearest sampling would drop thin strokes)."""
    z = encode(image * (1 - mask))
    small = F.adaptive_max_pool2d(mask, z.shape[-2:])
    return {"concat": torch.cat([small, z], dim=1)}


def training_inputs(task: TaskConfig, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                    gen: torch.Generator | None = None, level: int | None = None,
                    encode_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """(scaled latents of the target images, extra UNet inputs, the conditioning image a person would
    look at: the low-resolution or the masked image) for one batch. Random draws come from `gen` (torch's
    global generator by default); `level` fixes the noise-augmentation level instead of drawing it.
    `encode_input` (default `encode`) encodes the images made from the targets: the residual's upsampled
    input and the masked image."""
    encode_input = encode_input or encode
    with torch.no_grad():
        z = encode(images)
        if task.kind == "sr":
            low = degrade(images, task.scale, task.degradation, gen)
            levels = None
            if task.noise_levels:
                levels = torch.randint(task.noise_levels, (len(images),), generator=gen) if level is None else torch.full((len(images),), level)
                levels = levels.to(images.device)
            if task.residual:
                z = (z.float() - sr_base(low, tuple(images.shape[-2:]), encode_input)) * task.residual_scale
            return z, sr_inputs(low, tuple(z.shape[-2:]), levels, gen), low
        if task.kind == "inpaint":
            masks = random_masks(len(images), images.shape[-1], gen).to(images.device)
            return z, inpaint_inputs(images, masks, encode_input), images * (1 - masks)
    return z, {}, None
