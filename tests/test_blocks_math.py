"""The sub-pixel upsample-conv against its definition (nearest x2 upsampling, then a padded 3x3 conv), and
inference's channels-last layout against training's NCHW numbers."""

import pytest
import torch
import torch.nn.functional as F

from ldmcli.nn.blocks import Upsample, upsample_conv


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 3, 1, 1), (3, 4, 16, 16)])
def test_upsample_conv_matches_upsampling_then_conv_values_and_gradients(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ours = upsample_conv(x, w, b)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    assert ours.shape == ref.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(ours, ref, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(ours, (x, w, b), upstream)
    ref_grads = torch.autograd.grad(ref, (x, w, b), upstream)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-10)


def test_upsample_module_agrees_on_both_paths_in_bf16():
    """Small maps take interpolate + conv, large ones the sub-pixel form; both match fp32 within bf16 error."""
    torch.manual_seed(0)
    up = Upsample(8)
    for size in (4, 16, 24):
        x = torch.randn(2, 8, size, size)
        ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = up(x).float()
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_inference_layout_gives_the_training_layout_numbers():
    """Without gradients, maps from 32x32 on run channels-last (and the sub-pixel upsample writes so);
    the numbers are those of the NCHW path that training takes."""
    from ldmcli.autoencoder.config import AutoencoderConfig
    from ldmcli.autoencoder.model import Autoencoder
    from ldmcli.diffusion.unet import UNet, UNetConfig

    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, attn_factors=[4]))
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=[1, 2], attention_levels=[2]))
    for p in unet.conv_out.parameters():
        torch.nn.init.normal_(p)  # zero-initialised, it would hide the UNet's body
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    t = torch.tensor([10, 500])
    z = ae.encode(x)
    with torch.no_grad():
        fast = [ae.encode(x), ae.decode(z), unet(x, t)]
    slow = [ae.encode(x), ae.decode(z), unet(x, t)]
    assert fast[1].is_contiguous(memory_format=torch.channels_last) and slow[1].is_contiguous()
    for a, b in zip(fast, slow):
        assert (a - b.detach()).abs().max() < 1e-5 * b.abs().max()  # fp32 rounding only
