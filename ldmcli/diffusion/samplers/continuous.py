"""Samplers of the probability-flow ODE / reverse SDE in sigma (Karras et al. 2022, k-diffusion):
Euler, Euler ancestral, Heun, DPM-Solver++ 2M and its SDE variant.

They run on x / sqrt(alpha-bar) (variance exploding, x = x0 + sigma * eps) from sigma(timesteps[0]) down to
sigma = 0; the model still sees its own input x * sqrt(alpha-bar) at the (possibly fractional) timestep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ldmcli.diffusion import parametrization as P
from ldmcli.diffusion.samplers.base import Callback, Denoiser, Generators, batch_t, randn
from ldmcli.diffusion.samplers.timesteps import sigma_at


class _Ode:
    """The denoiser seen in sigma: x0 estimate of a VE sample at step i, and the hand-off back to VP."""

    def __init__(self, denoise: Denoiser, timesteps: Sequence[float], alphas_cumprod: torch.Tensor, prediction: str,
                 callback: Callback | None):
        self.denoise, self.timesteps, self.prediction, self.callback = denoise, list(timesteps), prediction, callback
        self.sigmas = torch.cat([sigma_at(self.timesteps, alphas_cumprod), torch.zeros(1, dtype=torch.float64)]).tolist()

    def x0(self, x: torch.Tensor, i: int) -> torch.Tensor:
        s = self.sigmas[i]
        abar = torch.tensor(1 / (1 + s * s), dtype=torch.float64)
        x_in = x / (1 + s * s) ** 0.5
        return P.split(self.prediction, self.denoise(x_in, batch_t(self.timesteps[i], x)).float(), x_in, abar)[0]

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * (1 + self.sigmas[0] ** 2) ** 0.5

    def done(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, self.timesteps[i], x / (1 + self.sigmas[i + 1] ** 2) ** 0.5, x0)


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                 prediction: str = "eps", generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler's method on dx/dsigma = (x - x0) / sigma."""
    ode = _Ode(denoise, timesteps, alphas_cumprod, prediction, callback)
    x = ode.start(x)
    for i in range(len(ode.timesteps)):
        s, s_next = ode.sigmas[i], ode.sigmas[i + 1]
        x0 = ode.x0(x, i)
        x = x + (x - x0) / s * (s_next - s)
        ode.done(i, x, x0)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                           prediction: str = "eps", generator: Generators = None, callback: Callback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """An Euler step down to sigma_down, then fresh noise sigma_up back up to sigma_next (k-diffusion); eta
    scales sigma_up from 0 (plain Euler) to 1 (the full ancestral step)."""
    ode = _Ode(denoise, timesteps, alphas_cumprod, prediction, callback)
    x = ode.start(x)
    for i in range(len(ode.timesteps)):
        s, s_next = ode.sigmas[i], ode.sigmas[i + 1]
        up = eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
        down = (s_next**2 - up**2) ** 0.5
        x0 = ode.x0(x, i)
        x = x + (x - x0) / s * (down - s)
        if s_next > 0 and up > 0:
            x = x + up * randn(x, generator)
        ode.done(i, x, x0)
    return x


@torch.no_grad()
def sample_heun(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                prediction: str = "eps", generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """EDM's 2nd-order Heun (Karras et al. 2022, Alg. 1): an Euler step, then the trapezoidal correction with
    the slope at its end, except on the last step to sigma = 0. n steps cost 2n - 1 evaluations."""
    ode = _Ode(denoise, timesteps, alphas_cumprod, prediction, callback)
    x = ode.start(x)
    for i in range(len(ode.timesteps)):
        s, s_next = ode.sigmas[i], ode.sigmas[i + 1]
        x0 = ode.x0(x, i)
        d = (x - x0) / s
        x_euler = x + d * (s_next - s)
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - ode.x0(x_euler, i + 1)) / s_next
            x = x + (d + d_next) / 2 * (s_next - s)
        ode.done(i, x, x0)
    return x


def _dpmpp_2m(denoise, x, timesteps, alphas_cumprod, prediction, generator, callback, eta: float) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), midpoint form, in lambda = -log sigma; eta > 0 is the SDE variant
    (k-diffusion's): the decay runs over (1 + eta) h and noise refills what the extra eta h took (eta = 1:
    diffusers' sde-dpmsolver++). The last step to sigma = 0 is first order."""
    ode = _Ode(denoise, timesteps, alphas_cumprod, prediction, callback)
    x = ode.start(x)
    old_x0, h_last = None, None
    for i in range(len(ode.timesteps)):
        s, s_next = ode.sigmas[i], ode.sigmas[i + 1]
        x0 = ode.x0(x, i)
        if s_next == 0:
            x = x0
        else:
            h = math.log(s / s_next)
            decay = -math.expm1(-(1 + eta) * h)
            x0_d = x0 if old_x0 is None else x0 + h / h_last / 2 * (x0 - old_x0)
            x = s_next / s * math.exp(-eta * h) * x + decay * x0_d
            if eta > 0:
                x = x + s_next * (-math.expm1(-2 * eta * h)) ** 0.5 * randn(x, generator)
            h_last = h
        old_x0 = x0
        ode.done(i, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                    prediction: str = "eps", generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    return _dpmpp_2m(denoise, x, timesteps, alphas_cumprod, prediction, generator, callback, eta=0.0)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                        prediction: str = "eps", generator: Generators = None, callback: Callback | None = None,
                        eta: float = 1.0) -> torch.Tensor:
    return _dpmpp_2m(denoise, x, timesteps, alphas_cumprod, prediction, generator, callback, eta)


@torch.no_grad()
def sample_unipc(denoise: Denoiser, x: torch.Tensor, timesteps: Sequence[float], alphas_cumprod: torch.Tensor,
                 prediction: str = "eps", generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), the B(h) = e^h - 1 variant of order 2 on x0: a multistep predictor
    (UniP), then a corrector (UniC) that reuses the model call at the predicted sample, so it costs one
    evaluation per step. Orders warm up from 1 and fall back to 1 for the last step, as diffusers does."""
    ode = _Ode(denoise, timesteps, alphas_cumprod, prediction, callback)
    sig, n = ode.sigmas, len(ode.timesteps)
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    x = ode.start(x)
    x0s: list[torch.Tensor] = []  # the last two x0 estimates, oldest first
    last_x, last_order = x, 0
    for i in range(n):
        x0 = ode.x0(x, i)
        if i > 0:
            x = _unic(last_x, x0s, x0, lam, sig, i, last_order)
        x0s = (x0s + [x0])[-2:]
        last_x, last_order = x, min(2, n - i, i + 1)
        x = _unip(x, x0s, lam, sig, i, last_order)
        ode.done(i, x, x0)
    return x


def _unip(x: torch.Tensor, x0s: list[torch.Tensor], lam: list[float], sig: list[float], i: int, order: int) -> torch.Tensor:
    """Predict the sample at sigma[i + 1] from the one at sigma[i]; B(h) = e^-h - 1 = sigma ratio - 1."""
    if sig[i + 1] == 0:
        return x0s[-1]
    h = lam[i + 1] - lam[i]
    phi = math.expm1(-h)
    out = sig[i + 1] / sig[i] * x - phi * x0s[-1]
    if order == 2:
        r = (lam[i - 1] - lam[i]) / h
        out = out - phi * 0.5 * (x0s[-2] - x0s[-1]) / r
    return out


def _unic(x_prev: torch.Tensor, x0s: list[torch.Tensor], x0_now: torch.Tensor, lam: list[float], sig: list[float], i: int,
          order: int) -> torch.Tensor:
    """Correct the sample at sigma[i] (predicted from x_prev at sigma[i - 1]) with the x0 estimate made at it."""
    h = lam[i] - lam[i - 1]
    phi = math.expm1(-h)
    base = sig[i] / sig[i - 1] * x_prev - phi * x0s[-1]
    d_now = x0_now - x0s[-1]
    if order == 1:
        return base - phi * 0.5 * d_now
    r = (lam[i - 2] - lam[i - 1]) / h
    k1 = phi / -h - 1
    b1, b2 = k1 / phi, (k1 / -h - 0.5) * 2 / phi
    rho0 = (b2 - b1) / (r - 1)  # solves [[1, 1], [r, 1]] rho = [b1, b2]
    return base - phi * (rho0 * (x0s[-2] - x0s[-1]) / r + (b1 - rho0) * d_now)
