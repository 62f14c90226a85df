"""Conversions between what a network predicts (eps, v or x0) and the clean sample / noise.

With x_t = a x0 + s eps, a = sqrt(alpha-bar), s = sqrt(1 - alpha-bar):
  v = a eps - s x0;   x0 = a x_t - s v;   eps = s x_t + a v.
The objective and every sampler go through these functions, so a model trained with one prediction
type is sampled with the same algebra it was trained with.
"""

from __future__ import annotations

import torch


def _bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (like.ndim - 1))) if c.ndim else c


def levels(abar: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) for alpha-bar values, shaped to broadcast against `like` and in its dtype."""
    abar = _bcast(abar, like).to(like.dtype)
    return abar.sqrt(), (1 - abar).sqrt()


def add_noise(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    a, s = levels(abar, x0)
    return a * x0 + s * eps


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """What a network with this prediction type should output at noise level alpha-bar."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        a, s = levels(abar, x0)
        return a * eps - s * x0
    raise ValueError(f"unknown prediction type {prediction!r}")


def split(prediction: str, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a network output at x_t; each formula avoids dividing by a zero level."""
    a, s = levels(abar, x)
    if prediction == "eps":
        return (x - s * output) / a, output
    if prediction == "x0":
        return output, (x - a * output) / s
    if prediction == "v":
        return a * x - s * output, s * x + a * output
    raise ValueError(f"unknown prediction type {prediction!r}")
