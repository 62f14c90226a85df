"""Build a diffusion model from its recipe, save it to and load it from a model dir.

A model dir holds config.json (the resolved DiffusionRecipe), model.safetensors (+ ema.safetensors)
with the UNet and any trained conditioner under "unet." and "cond.", and a copy of its autoencoder's
model dir in autoencoder/ (named relative to itself), so that it can be moved or shared on its own, as
a diffusers pipeline carries its vae/. Older dirs that name an autoencoder elsewhere, relative or
absolute, still load. A frozen OpenCLIP tower is not copied: the config names its weights file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldmcli.diffusion.conditioning import build_conditioner, context_dim
from ldmcli.diffusion.config import KIND, DiffusionRecipe
from ldmcli.diffusion.first_stage import load_first_stage
from ldmcli.diffusion.image_cond import check as check_task, concat_channels
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.diffusion.schedule import alphas_cumprod
from ldmcli.diffusion.unet import UNet
from ldmcli.errors import UserError
from ldmcli.modeldir import copy_model_dir, load_weights, read_model_config, save_model_dir


def resolve(recipe: DiffusionRecipe, channels: int, size: int) -> DiffusionRecipe:
    """Fill in what the recipe leaves to the data: latent channels and size, context width, the extra
    input channels and noise levels of an image-conditioned task."""
    check_task(recipe.task)
    if recipe.sampling.sampler not in SAMPLERS or recipe.sampling.steps < 1:
        raise UserError(f"sampling.sampler must be one of {', '.join(SAMPLERS)} and sampling.steps at least 1, "
                        f"got '{recipe.sampling.sampler}' and {recipe.sampling.steps}")
    fs = dataclasses.replace(recipe.first_stage, channels=channels, size=size)
    width = context_dim(recipe.conditioner)
    unet = recipe.unet
    if unet.context_dim and width and unet.context_dim != width:
        raise UserError(f"unet.context_dim = {unet.context_dim} but the {recipe.conditioner.kind} conditioner gives {width}-wide tokens")
    if width and unet.attention == "plain":
        raise UserError("a conditioner with context tokens needs unet.attention = 'transformer'")
    if unet.position_encoding and unet.attention == "plain":
        raise UserError("unet.position_encoding needs unet.attention = 'transformer'")
    unet = dataclasses.replace(unet, in_channels=unet.in_channels or channels, out_channels=unet.out_channels or channels, context_dim=width,
                               concat_channels=concat_channels(recipe.task, channels), num_levels=recipe.task.noise_levels)
    if size % (2 ** (len(unet.channel_mult) - 1)):
        raise UserError(f"latent size {size} is not a multiple of 2^{len(unet.channel_mult) - 1} (unet.channel_mult has {len(unet.channel_mult)} levels)")
    return dataclasses.replace(recipe, first_stage=fs, unet=unet)


def trained_with_unet(recipe: DiffusionRecipe) -> bool:
    """Class embeddings, the text and layout transformers are trained and saved; a frozen CLIP tower is neither."""
    return recipe.conditioner.kind in ("class", "text", "layout")


def build(recipe: DiffusionRecipe) -> tuple[UNet, nn.Module]:
    """UNet and conditioner of a resolved recipe (random weights; a frozen CLIP tower loads its file)."""
    unet = UNet(recipe.unet)
    return unet, build_conditioner(recipe.conditioner, unet.time_embed_dim)


def weights_module(recipe: DiffusionRecipe, unet: UNet, cond: nn.Module) -> nn.Module:
    """What model.safetensors holds: the UNet, and the conditioner when it is trained."""
    return nn.ModuleDict({"unet": unet, "cond": cond} if trained_with_unet(recipe) else {"unet": unet})


AUTOENCODER_DIR = "autoencoder"


def save(out_dir: Path, recipe: DiffusionRecipe, unet: UNet, cond: nn.Module, ema: dict[str, nn.Module]) -> Path:
    ae = recipe.first_stage.autoencoder
    if ae:
        copy = Path(out_dir) / AUTOENCODER_DIR
        if Path(ae).resolve() != copy.resolve():
            copy_model_dir(ae, copy)
        ae = AUTOENCODER_DIR
    saved = dataclasses.replace(recipe, first_stage=dataclasses.replace(recipe.first_stage, autoencoder=ae))
    ema_module = weights_module(recipe, ema["unet"], ema.get("cond", cond)) if "unet" in ema else None
    return save_model_dir(out_dir, KIND, saved, weights_module(recipe, unet, cond), ema_module)


@dataclass
class DiffusionModel:
    """Everything a sampler needs, loaded from a model dir."""

    recipe: DiffusionRecipe
    unet: UNet
    cond: nn.Module
    first_stage: nn.Module
    alphas_cumprod: torch.Tensor

    @property
    def prediction(self) -> str:
        return self.recipe.schedule.prediction

    @property
    def scale_factor(self) -> float:
        return self.recipe.first_stage.scale_factor


def load(model_dir: Path | str, device: torch.device | str = "cpu", use_ema: bool = True) -> DiffusionModel:
    model_dir = Path(model_dir)
    recipe = read_model_config(model_dir, DiffusionRecipe, KIND)
    unet, cond = build(recipe)
    load_weights(weights_module(recipe, unet, cond), model_dir, use_ema=use_ema)
    ae = recipe.first_stage.autoencoder
    if ae and not Path(ae).is_absolute():
        ae = str((model_dir / ae).resolve())
    if ae and not Path(ae).is_dir():
        raise UserError(f"{model_dir} names autoencoder dir '{recipe.first_stage.autoencoder}', which is not there ({ae})")
    first_stage = load_first_stage(ae, device)
    unet.to(device).eval().requires_grad_(False)
    cond.to(device).eval().requires_grad_(False)
    return DiffusionModel(recipe, unet, cond, first_stage, alphas_cumprod(recipe.schedule))

