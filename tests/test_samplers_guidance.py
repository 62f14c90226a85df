"""Classifier-free guidance on a small real UNet with a text conditioner: the doubled batch keeps its halves
apart, scale 1 is the conditional model, scale 0 the unconditional or negative one; rescale as diffusers;
a guidance interval guides the noisier timesteps only."""

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from ldmcli.diffusion.conditioning import ConditionerConfig, build_conditioner
from ldmcli.diffusion.guidance import guided_denoiser, rescale_guidance
from ldmcli.diffusion.unet import UNet, UNetConfig


@pytest.fixture(scope="module")
def net_and_text():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                           attention_levels=[2], num_heads=2, context_dim=16)).eval()
    for p in unet.parameters():  # as if trained: the zero-initialised output layers would hide everything
        p.data.normal_(0, 0.1)
    text = build_conditioner(ConditionerConfig(kind="text", width=16, layers=1, heads=2, head_dim=8, max_length=8), 32).eval()
    return unet, text


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
T = torch.tensor([900, 300])


@torch.no_grad()
def test_scales_zero_and_one_are_the_two_halves_alone(net_and_text):
    unet, text = net_and_text
    cond, null, neg = text(["a red circle", "a blue square"]), text(["", ""]), text(["green", "green"])
    c, u, n = (unet(X, T, **enc) for enc in (cond, null, neg))
    assert torch.equal(guided_denoiser(unet, cond, null, 1.0)(X, T), c)
    assert torch.allclose(guided_denoiser(unet, cond, null, 0.0)(X, T), u, atol=1e-5)
    assert torch.allclose(guided_denoiser(unet, cond, neg, 4.0)(X, T), n + 4 * (c - n), atol=1e-4)
    assert (c - n).abs().max() > 1e-4 and (u - n).abs().max() > 1e-4  # the prompts do reach the network


@torch.no_grad()
def test_a_guidance_interval_guides_only_the_noisier_timesteps(net_and_text):
    """T holds one timestep above 500 and one below: the first is guided, the second is the conditional
    model alone; with both below, the unconditional half never runs."""
    unet, text = net_and_text
    cond, null = text(["a red circle", "a blue square"]), text(["", ""])
    c, u = (unet(X, T, **enc) for enc in (cond, null))
    out = guided_denoiser(unet, cond, null, 3.0, from_t=500)(X, T)
    assert torch.allclose(out[0], (u + 3 * (c - u))[0], atol=1e-4)
    assert torch.allclose(out[1], c[1], atol=1e-5)
    calls = []
    counted = guided_denoiser(lambda x, t, **enc: calls.append(len(x)) or unet(x, t, **enc), cond, null, 3.0, from_t=950)
    assert torch.equal(counted(X, T), c) and calls == [2]


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_rescale_matches_diffusers(phi):
    g = torch.Generator().manual_seed(2)
    guided, cond = torch.randn(3, 4, 8, 8, generator=g) * 3, torch.randn(3, 4, 8, 8, generator=g)
    assert torch.allclose(rescale_guidance(guided, cond, phi), rescale_noise_cfg(guided, cond, phi), atol=1e-6)
    if phi == 1.0:
        assert torch.allclose(rescale_guidance(guided, cond, phi).std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), atol=1e-5)
