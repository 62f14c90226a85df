"""A network compiled for inference: torch.compile with frozen weights, for long sampling jobs."""

from __future__ import annotations

import torch
from torch import nn


class FrozenCompiled:
    """Calls `module` through torch.compile with inductor's freezing: the weights become constants, so on
    the CPU the convolutions and linears get pre-packed oneDNN weights and the norm/activation/residual
    chains are fused (bench/sampling.py --compile measures it against eager). The first call compiles
    (minutes on a small CPU; inductor caches the result on disk for later runs). A batch smaller than the
    first is padded up to it, so the short last batch of a run does not pay a second compile."""

    def __init__(self, module: nn.Module):
        self.fn = torch.compile(module, dynamic=False, options={"freezing": True})
        self.batch = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        n = x.shape[0]
        self.batch = self.batch or n
        if n >= self.batch:
            return self.fn(x, t, **inputs)
        extra = self.batch - n

        def pad(v):
            if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
                return torch.cat([v, v[-1:].expand(extra, *v.shape[1:])])
            return v

        return self.fn(pad(x), pad(t), **{k: pad(v) for k, v in inputs.items()})[:n]
