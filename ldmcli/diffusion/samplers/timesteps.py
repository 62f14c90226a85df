"""Which timesteps a sampler visits, and the noise level sigma = sqrt((1 - alpha-bar) / alpha-bar) at each.

Samplers take descending timesteps. Whole ones index the training schedule; fractional ones (from Karras
sigmas) sit between two training steps, where sigma is interpolated linearly in log sigma, the inverse of
the sigma -> t map k-diffusion and diffusers use, so a Karras sigma survives the round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# diffusers' stand-in for alpha-bar = 0 (zero terminal SNR), where sigma would be infinite
MIN_ALPHA_BAR = 2.0**-24


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


def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    abar = alphas_cumprod.double().clamp(min=MIN_ALPHA_BAR)
    return ((1 - abar) / abar).sqrt().log()


def sigma_at(timesteps: Sequence[float] | torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma at (possibly fractional) timesteps, float64."""
    ls = log_sigmas(alphas_cumprod)
    t = torch.as_tensor(timesteps, dtype=torch.float64).clamp(0, len(ls) - 1)
    lo = t.floor().long().clamp(max=len(ls) - 2)
    w = t - lo
    return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()


def sigma_to_t(sigmas: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The fractional timestep of each sigma (log sigma rises with t, so this is a sorted search)."""
    ls = log_sigmas(alphas_cumprod)
    target = sigmas.double().clamp(min=1e-10).log()
    lo = (torch.searchsorted(ls, target, right=True) - 1).clamp(0, len(ls) - 2)
    w = ((target - ls[lo]) / (ls[lo + 1] - ls[lo])).clamp(0, 1)
    return lo + w


def karras_timesteps(timesteps: Sequence[int], alphas_cumprod: torch.Tensor, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) eq. 5: as many sigmas as `timesteps`, spaced evenly in sigma^(1/rho) between
    the sigmas of their first and last entries, as fractional timesteps."""
    ends = sigma_at([timesteps[0], timesteps[-1]], alphas_cumprod)
    ramp = torch.linspace(0, 1, len(timesteps), dtype=torch.float64)
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return sigma_to_t(sigmas, alphas_cumprod).tolist()


def alpha_bar_at(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha-bar (float64) at a batch of timesteps as the samplers pass them: the schedule's own value at
    whole (long) ones, the interpolated sigma's between them."""
    if not t.is_floating_point():
        return alphas_cumprod.to(device=t.device, dtype=torch.float64)[t]
    return (1 / (1 + sigma_at(t.cpu(), alphas_cumprod) ** 2)).to(t.device)
