"""The diffusion recipe: every section a typed dataclass, saved resolved into run and model dirs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ldmcli.config import DataConfig, TrainConfig
from ldmcli.diffusion.conditioning import ConditionerConfig
from ldmcli.diffusion.image_cond import TaskConfig
from ldmcli.diffusion.objective import ObjectiveConfig
from ldmcli.diffusion.schedule import ScheduleConfig
from ldmcli.diffusion.unet import UNetConfig

KIND = "diffusion"
RUN_KIND = "diffusion-run"


@dataclass
class FirstStageConfig:
    """autoencoder: its model dir ("" = pixel space, the paper's LDM-1). scale_factor 0 = from the
    latent shards' stats.json (or measured on the fly with --ae); channels/size 0 = filled in at start.

    center: subtract the latents' per-channel means (`shift`, found where the scale factor is) before
    scaling, and scale by the pooled within-channel std, as EDM2 normalises SD's latents (SD3 subtracts
    one shift for all channels). An autoencoder with residual shortcuts has latents near the image's
    colours, whose mean (about 0.76 on the demo's light scenes) is 2.4 of their std: uncentred, the
    diffusion spends its noise levels on that offset."""

    autoencoder: str = ""
    scale_factor: float = 0.0
    center: bool = False
    shift: list[float] = field(default_factory=list)
    channels: int = 0
    size: int = 0

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents to what the diffusion model sees."""
        z = z.float()
        if self.shift:
            z = z - torch.tensor(self.shift, device=z.device).view(-1, 1, 1)
        return z * self.scale_factor

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / self.scale_factor
        if self.shift:
            x = x + torch.tensor(self.shift, device=x.device).view(-1, 1, 1)
        return x


@dataclass
class PreviewConfig:
    """Image grids during training: fixed prompts or classes and a fixed seed, so progress is visible."""

    n: int = 16
    steps: int = 25
    guidance: float = 3.0
    seed: int = 0
    prompts: list[str] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)


@dataclass
class DiffusionRecipe:
    task: TaskConfig = field(default_factory=TaskConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=32))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, ema_decay=0.9999))
