"""Classifier-free guidance (Ho & Salimans 2022) as a plain denoiser for the samplers.

The conditional and unconditional (or negative-prompt) halves go through the network as one doubled
batch: out = uncond + scale * (cond - uncond). Guidance rescale (Lin et al. 2023, eq. 15-16) pulls the
per-sample standard deviation of the guided output back towards the conditional one, which keeps high
scales from over-exposing (it matters most for zero-terminal-SNR v models).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldmcli.diffusion.samplers import Denoiser

Net = Callable[..., torch.Tensor]


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Blend `guided` with itself scaled to the per-sample std of `cond`; phi = 0 leaves it as it is."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def guided_denoiser(net: Net, cond: dict, uncond: dict | None = None, scale: float = 1.0, rescale: float = 0.0,
                    from_t: float = 0.0) -> Denoiser:
    """denoise(x, t) for `net(x, t, **conditioning)`. `cond` and `uncond` are conditioner outputs for the
    batch (uncond: the null condition or a negative prompt). Scale 1 (or no uncond) runs the conditional
    half alone; scale 0 is the unconditional model. from_t: guidance only at timesteps t >= from_t (a
    guidance interval, Kynkaanniemi et al. 2024); below, the conditional half alone, one pass instead of two."""
    if uncond is None or scale == 1.0:
        return lambda x, t: net(x, t, **cond)
    if set(cond) != set(uncond):
        raise ValueError(f"conditional and unconditional inputs differ: {sorted(cond)} vs {sorted(uncond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        guided = t >= from_t
        if from_t > 0 and not guided.any():
            return net(x, t, **cond)
        c, u = net(torch.cat([x, x]), torch.cat([t, t]), **both).float().chunk(2)
        out = u + scale * (c - u)
        out = rescale_guidance(out, c, rescale) if rescale else out
        return torch.where(guided.view(-1, *[1] * (x.ndim - 1)), out, c) if from_t > 0 else out

    return denoise
