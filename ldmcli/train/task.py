"""The contract between a model and the one training loop.

A task says what one step computes and which modules each optimiser trains. The loop owns everything
else: devices, DistributedDataParallel, autocast, accumulation, clipping, schedules, EMA, checkpoints,
logging. An autoencoder with a discriminator is two phases; a diffusion model or a classifier is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Phase:
    """One optimiser and the modules it trains; None fields fall back to the TrainConfig."""

    name: str
    modules: tuple[str, ...]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


class TrainTask:
    """Subclass this; set `models` in __init__ and implement `loss`."""

    models: dict[str, nn.Module]
    required_keys: tuple[str, ...] = ("image",)
    latent_shape: tuple[int, ...] | None = None  # cached latents of another shape are skipped by the reader

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("main", tuple(self.models)),)

    def ema_modules(self) -> tuple[str, ...]:
        """Modules whose weights get an exponential moving average (when train.ema_decay > 0)."""
        return self.phases()[0].modules

    def loss(
        self, phase: str, models: Mapping[str, nn.Module], batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The scalar to minimise in `phase` for this micro-batch, and named figures to log.

        `models` holds the DDP-wrapped module for those trained in this phase and the bare module
        for the others, so a module used without gradients (a discriminator judging the generator)
        never confuses DDP's reducer. Phases run in order on the same micro-batch, so a task may
        keep tensors from an earlier phase (e.g. the reconstruction) for a later one.
        """
        raise NotImplementedError

    preview_nrow: int | None = None  # images per row of the preview grid (None: a square grid)

    def preview(self, models: Mapping[str, nn.Module], batch: dict, step: int) -> torch.Tensor | None:
        """Images in [-1, 1] (N, 3, H, W) for `samples/step_XXXXXX.png`, or None."""
        return None

    def export(self, out_dir: Path, models: Mapping[str, nn.Module], ema: Mapping[str, nn.Module]) -> None:
        """Write the finished model dir (config.json + safetensors) that later commands load."""
        raise NotImplementedError
