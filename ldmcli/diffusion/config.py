"""The diffusion recipe: every section a typed dataclass, saved resolved into run and model dirs."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    latent_std: the std the scale factor found (stats.json, measured, or the autoencoder's own) brings the
    latents to, the paper's 1; a given scale_factor is used as is. Below 1 it shifts every noise level toward
    noise (SNR times latent_std^2), for latents that keep their structure through the schedule's top levels:
    the demo's, through the shortcut autoencoder (README's demo section).

    cache_mb: when images are encoded on the fly, the latents of images met before are looked up (by
    their pixels) in an in-memory cache of up to this many MB (encode_cache.py; 0 = encode every time)."""

    autoencoder: str = ""
    scale_factor: float = 0.0
    latent_std: float = 1.0
    channels: int = 0
    size: int = 0
    cache_mb: int = 1024


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
class SamplingConfig:
    """The sampler and step count `ldm sample`, `ldm upscale` and `ldm eval` use when not told, so a model
    dir carries the sampler its figures were measured with (as a diffusers pipeline carries its scheduler)."""

    sampler: str = "dpmpp_2m"
    steps: int = 25


@dataclass
class DiffusionRecipe:
    task: TaskConfig = field(default_factory=TaskConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=32))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, ema_decay=0.9999))
