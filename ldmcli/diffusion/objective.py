"""The training objective: sample timesteps and noise, compare the network's output with its target.

Timesteps are stratified over the batch (each sample draws from its own 1/B slice of [0, T), shuffled),
which keeps the marginal uniform, lowers the loss's variance, and puts samples in every loss bucket at
every step, so the per-timestep figures in metrics.jsonl average without gaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ldmcli.diffusion import parametrization as P


@dataclass
class ObjectiveConfig:
    """min_snr is Hang et al. 2023's min-SNR-gamma weighting; eps measures any network's error in noise units
    (for a v model that weights each level by alpha-bar, moving weight from the coarse, high-noise levels
    to the low ones where fine detail is drawn); offset_noise adds per-channel constant noise."""

    loss: Literal["l2", "l1"] = "l2"
    weighting: Literal["uniform", "min_snr", "eps"] = "uniform"
    snr_gamma: float = 5.0
    offset_noise: float = 0.0
    buckets: int = 10


def stratified_timesteps(batch: int, timesteps: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(batch, generator=generator, device=device)
    order = torch.randperm(batch, generator=generator, device=device)
    return ((order + u) * timesteps / batch).long().clamp(max=timesteps - 1)


def loss_weight(weighting: str, prediction: str, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weight; min-SNR-gamma and eps expressed for the network's own target (eps, v or x0)."""
    if weighting == "uniform":
        return torch.ones_like(snr)
    if weighting == "eps":  # eps error = sqrt(abar) * v error = sqrt(snr) * x0 error
        if prediction == "eps":
            return torch.ones_like(snr)
        return snr / (snr + 1) if prediction == "v" else snr
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return (gamma / snr).clamp(max=1.0)  # min(snr, gamma) / snr, finite at snr = 0
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    abar_table: torch.Tensor,
    prediction: str,
    cfg: ObjectiveConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted mean loss over the batch, and the unweighted loss per timestep bucket for logging."""
    b, T = x0.shape[0], abar_table.shape[0]
    t = stratified_timesteps(b, T, x0.device)
    abar64 = abar_table.to(x0.device)[t]
    x0 = x0.float()
    eps = torch.randn_like(x0)
    if cfg.offset_noise > 0:
        eps = eps + cfg.offset_noise * torch.randn(*x0.shape[:2], *([1] * (x0.ndim - 2)), device=x0.device)
    abar = abar64.float()
    x_t = P.add_noise(x0, eps, abar)
    out = model(x_t, t).float()
    err = out - P.target(prediction, x0, eps, abar)
    per_sample = (err.square() if cfg.loss == "l2" else err.abs()).flatten(1).mean(1)
    weight = loss_weight(cfg.weighting, prediction, (abar64 / (1 - abar64)).float(), cfg.snr_gamma)
    loss = (weight * per_sample).mean()
    logs = {}
    n = cfg.buckets if b % max(cfg.buckets, 1) == 0 else min(cfg.buckets, b // 2)
    if n > 1:
        bucket = t * n // T
        detached = per_sample.detach()
        for k in range(n):
            mask = bucket == k
            if mask.any():
                logs[f"loss_t{k * T // n:03d}"] = detached[mask].mean()
    return loss, logs
