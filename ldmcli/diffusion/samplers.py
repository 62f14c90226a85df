"""Samplers as pure functions in the k-diffusion style.

`denoise(x, t)` is any callable returning the network's output (in its own prediction type) for a batch
x at integer timesteps t (B,); it already applies classifier-free guidance if wanted. A sampler holds
no state between calls: the same inputs and generator give the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ldmcli.diffusion import parametrization as P

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def spaced_timesteps(num_train: int, steps: int, spacing: str = "trailing") -> list[int]:
    """Descending timesteps for a `steps`-step sampler (the spacings of Lin et al. 2023, Table 2)."""
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}, got {steps}")
    if spacing == "leading":
        ts = torch.arange(steps) * (num_train // steps)
    elif spacing == "trailing":
        ts = (torch.arange(num_train, 0, -num_train / steps).round() - 1).flip(0)
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train - 1, steps).round()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    return [int(t) for t in ts.flip(0)]


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021): deterministic for eta = 0, ancestral-DDPM-like for eta = 1.

    Steps from each timestep to the next one in `timesteps`; after the last, to alpha-bar = 1, so the
    result is the model's final clean estimate.
    """
    abar = alphas_cumprod.to(device=x.device, dtype=torch.float64)
    for i, t in enumerate(timesteps):
        a_t = abar[t]
        a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(a_t)
        out = denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0, eps = P.split(prediction, out, x.float(), a_t.float())
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * var.clamp(min=0).sqrt()
        x = a_prev.sqrt().float() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt().float() * eps
        if eta > 0 and i + 1 < len(timesteps):
            x = x + std.float() * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback(i, t, x, x0)
    return x
