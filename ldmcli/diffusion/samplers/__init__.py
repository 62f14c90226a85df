"""Samplers as pure functions in the k-diffusion style, one signature for all (see base.py), and their
command-line names. A sampler holds no state between calls: the same inputs and generators give the
same images."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ldmcli.diffusion.samplers.base import Callback, Denoiser, randn
from ldmcli.diffusion.samplers.continuous import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_unipc,
)
from ldmcli.diffusion.samplers.discrete import sample_ddim, sample_ddpm, sample_plms
from ldmcli.diffusion.samplers.timesteps import alpha_bar_at, karras_timesteps, sigma_at, spaced_timesteps


@dataclass(frozen=True)
class Sampler:
    """fn: the sampler; sigma_based: takes fractional (Karras) timesteps; extra_evals(n): model calls
    beyond one per step, for progress and speed figures."""

    fn: Callable[..., torch.Tensor]
    sigma_based: bool
    extra_evals: Callable[[int], int] = lambda steps: 0

    @property
    def takes_eta(self) -> bool:
        """Whether fn has an `eta` (how much fresh noise each step injects, 0 = deterministic); its
        default lives in fn's signature."""
        return "eta" in inspect.signature(self.fn).parameters


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(sample_ddpm, False),
    "ddim": Sampler(sample_ddim, False),
    "plms": Sampler(sample_plms, False, lambda steps: int(steps > 1)),
    "dpmpp_2m": Sampler(sample_dpmpp_2m, True),
    "dpmpp_2m_sde": Sampler(sample_dpmpp_2m_sde, True),
    "euler": Sampler(sample_euler, True),
    "euler_a": Sampler(sample_euler_ancestral, True),
    "heun": Sampler(sample_heun, True, lambda steps: steps - 1),
    "unipc": Sampler(sample_unipc, True),
}

__all__ = [
    "SAMPLERS", "Callback", "Denoiser", "Sampler", "alpha_bar_at", "karras_timesteps", "randn", "sample_ddim", "sample_ddpm",
    "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_euler", "sample_euler_ancestral", "sample_heun",
    "sample_plms", "sample_unipc", "sigma_at", "spaced_timesteps",
]
