"""Exponential moving average of weights, with the warm-up the LDM code uses."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps an fp32 shadow module; decay warms up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        shadow = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        live = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for s, b in zip(self.module.buffers(), model.buffers()):
            s.copy_(b)
