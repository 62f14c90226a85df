"""What every sampler shares: the denoiser and callback types, and noise drawn from the caller's generators.

Every sampler has the signature
    sample_x(denoise, x, timesteps, alphas_cumprod, prediction="eps", generator=None, callback=None)
where `x` is the noisy sample at `timesteps[0]` in the model's own (variance-preserving) space, `denoise(x, t)`
returns the network output (eps, v or x0, as `prediction` says) with guidance already applied, and the result
is the clean sample after the last step. `callback(i, t, x, x0)` sees each step's new sample and clean estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like `like`; one generator per sample when given a list, so an image's
    noise does not depend on the batch it was drawn in (the same draws diffusers' `randn_tensor` makes)."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
    if len(generator) != like.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
    draws = [torch.randn((1, *like.shape[1:]), generator=g, device=g.device, dtype=like.dtype) for g in generator]
    return torch.cat(draws).to(like.device)


def batch_t(t: float, x: torch.Tensor) -> torch.Tensor:
    """A timestep for every sample: long when whole (discrete samplers), float when fractional (Karras)."""
    if float(t).is_integer():
        return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
