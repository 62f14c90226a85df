"""The sub-pixel upsample-conv against its definition: nearest x2 upsampling, then a padded 3x3 conv."""

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
