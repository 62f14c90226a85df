"""Discrete noise schedules: beta_t for t = 0..T-1 and the cumulative signal level alpha-bar.

Everything downstream (objective, samplers, export) reads `alphas_cumprod`; the betas exist only to
build it. Computed in float64 so that a 1000-step cumulative product loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Prediction = Literal["eps", "v", "x0"]


@dataclass
class ScheduleConfig:
    """`scaled_linear` is the LDM paper's "linear" (linear in sqrt(beta)); `cosine` is Nichol & Dhariwal's."""

    kind: Literal["scaled_linear", "linear", "cosine"] = "scaled_linear"
    timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False
    prediction: Prediction = "eps"


def make_betas(kind: str, timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule kind {kind!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha-bar) so the last step is pure noise (Lin et al. 2023, Alg. 1)."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def alphas_cumprod(cfg: ScheduleConfig) -> torch.Tensor:
    """alpha-bar_t, float64, shape (T,)."""
    if cfg.timesteps < 2:
        raise ValueError("a schedule needs at least 2 timesteps")
    betas = make_betas(cfg.kind, cfg.timesteps, cfg.beta_start, cfg.beta_end)
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1 - betas, 0)


def snr(abar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha-bar / (1 - alpha-bar)."""
    return abar / (1 - abar)
