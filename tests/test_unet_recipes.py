"""Every diffusion recipe loads and builds; the paper recipes have the paper's parameter counts."""

import pytest
import torch
from conftest import ROOT

from ldmcli.config import load_recipe
from ldmcli.diffusion.config import DiffusionRecipe
from ldmcli.diffusion.layout import Box, Layout
from ldmcli.diffusion.model import build, resolve
from ldmcli.diffusion.unet import UNet

RECIPES = ROOT / "recipes"
CPU = {  # recipe -> latent (channels, size) of the data it is meant for
    "ldm-digits-class": (3, 8),
    "dm-pixel-digits": (3, 32),
    "ldm-shapes-text": (3, 16),
    "ldm-shapes-layout": (3, 16),
    "ldm-photos-uncond": (3, 16),
    "sr-photos-x4": (3, 16),
    "inpaint-shapes": (3, 16),
    "sr-imagenet-x4-paper": (3, 64),  # 119M parameters (not checked against the paper: its config's count is not in REFERENCES.md)
}
PAPER = {  # recipe -> latent shape, expected millions of parameters (UNet + trained conditioner), source
    "ldm-celebahq-uncond-paper": ((3, 64), 274, "paper Table 13: 274M"),
    "ldm-imagenet-cin-paper": ((3, 64), 400, "paper: 400M"),
    "ldm-txt2img-kl8-paper": ((4, 32), 1450, "paper: 1.45B with the text encoder"),
    "sd2-like-openclip": ((4, 96), 865.9, "SD 2 UNet (the frozen text tower is not trained)"),
}


def recipe(name):
    return load_recipe(DiffusionRecipe, RECIPES / f"{name}.toml")


def test_every_diffusion_recipe_is_covered():
    names = {p.stem for p in RECIPES.glob("*.toml") if p.stem.startswith(("ldm-", "dm-", "sd2-", "sr-", "inpaint-"))}
    assert names == set(CPU) | set(PAPER)


@pytest.mark.parametrize("name", CPU)
def test_cpu_recipe_output_shape(name):
    channels, size = CPU[name]
    cfg = resolve(recipe(name), channels, size)
    unet, cond = build(cfg)
    inputs = {"cls": torch.tensor([3]), "txt": ["a red circle"], "json": [Layout((Box("circle", "red", (0.1, 0.1, 0.4, 0.4)),))]}.get(cond.key)
    enc = cond(inputs) if inputs is not None else {}
    if cfg.unet.concat_channels:  # the low-resolution image, or the mask and masked latent
        enc["concat"] = torch.randn(1, cfg.unet.concat_channels, size, size)
    with torch.no_grad():
        out = unet(torch.randn(1, channels, size, size), torch.tensor([500]), **enc)
    assert out.shape == (1, channels, size, size)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_parameter_count(name):
    (channels, size), millions, source = PAPER[name]
    cfg = resolve(recipe(name), channels, size)
    with torch.device("meta"):
        if cfg.conditioner.kind == "clip":
            modules = [UNet(cfg.unet)]
        else:
            modules = list(build(cfg))
    count = sum(p.numel() for m in modules for p in m.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.05, f"{name}: {count:.1f}M vs {source}"
