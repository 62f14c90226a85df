"""Samplers that step between whole training timesteps: ancestral DDPM, DDIM and PLMS.

Each steps from one timestep to the next in `timesteps` and, after the last, to alpha-bar = 1, so the
result is the model's final clean estimate. Arithmetic is float32 on float64 schedule values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ldmcli.diffusion import parametrization as P
from ldmcli.diffusion.samplers.base import Callback, Denoiser, Generators, batch_t, randn


def _levels(timesteps: Sequence[int], alphas_cumprod: torch.Tensor, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(alpha-bar now, alpha-bar next) for every step; the step after the last goes to alpha-bar = 1."""
    abar = alphas_cumprod.to(device=device, dtype=torch.float64)
    ts = [int(t) for t in timesteps]
    if any(t != float(u) for t, u in zip(ts, timesteps)):
        raise ValueError("DDPM, DDIM and PLMS step between whole timesteps; Karras sigmas need a sigma-based sampler")
    now = [abar[t] for t in ts]
    return list(zip(now, now[1:] + [torch.ones_like(now[0])]))


def _ddim_step(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, a_prev: torch.Tensor, std: torch.Tensor | float = 0.0) -> torch.Tensor:
    return a_prev.sqrt().float() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt().float() * eps


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    generator: Generators = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021): deterministic for eta = 0; eta = 1 is ancestral DDPM."""
    for i, (t, (a_t, a_prev)) in enumerate(zip(timesteps, _levels(timesteps, alphas_cumprod, x.device))):
        out = denoise(x, batch_t(t, x)).float()
        x0, eps = P.split(prediction, out, x.float(), a_t.float())
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x = _ddim_step(x, x0, eps, a_prev, std)
        if eta > 0 and i + 1 < len(timesteps):
            x = x + std.float() * randn(x, generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_prev | x_t, x0) with its own ("fixed small") variance
    (Ho et al. 2020, eqs. 6-7), over strided timesteps as diffusers' DDPMScheduler does."""
    for i, (t, (a_t, a_prev)) in enumerate(zip(timesteps, _levels(timesteps, alphas_cumprod, x.device))):
        out = denoise(x, batch_t(t, x)).float()
        x0, _ = P.split(prediction, out, x.float(), a_t.float())
        beta = 1 - a_t / a_prev
        x = (a_prev.sqrt() * beta / (1 - a_t)).float() * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)).float() * x
        if i + 1 < len(timesteps):
            x = x + ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20).sqrt().float() * randn(x, generator)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def sample_plms(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """PLMS (Liu et al. 2022), the LDM paper's sampler: DDIM steps driven by a linear multistep (Adams-
    Bashforth, up to 4th order) extrapolation of eps; the first step is a 2nd-order pseudo improved Euler
    step, so n steps cost n + 1 evaluations. Every output is turned into eps at its own x_t and t before the
    extrapolation, so v and x0 models follow the same eps trajectory an eps model would."""
    levels = _levels(timesteps, alphas_cumprod, x.device)
    history: list[torch.Tensor] = []
    for i, (t, (a_t, a_prev)) in enumerate(zip(timesteps, levels)):
        _, eps = P.split(prediction, denoise(x, batch_t(t, x)).float(), x.float(), a_t.float())
        if not history and i + 1 < len(timesteps):
            x_next = _ddim_step(x, *P.split("eps", eps, x.float(), a_t.float()), a_prev)
            _, eps_next = P.split(prediction, denoise(x_next, batch_t(timesteps[i + 1], x)).float(), x_next, a_prev.float())
            combined = (eps + eps_next) / 2
        elif len(history) == 1:
            combined = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            combined = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        elif len(history) >= 3:
            combined = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        else:
            combined = eps
        history = (history + [eps])[-3:]
        x0, combined = P.split("eps", combined, x.float(), a_t.float())
        x = _ddim_step(x, x0, combined, a_prev)
        if callback is not None:
            callback(i, t, x, x0)
    return x
