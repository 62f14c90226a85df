"""The UNet: shapes, conditioning paths, convolutional sizes, checkpointing and channels_last equivalence."""

import pytest
import torch

from ldmcli.diffusion.unet import UNet, UNetConfig


def tiny(**kw):
    cfg = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
               attention_levels=[1, 2], num_heads=2, context_dim=0)
    cfg.update(kw)
    return UNet(UNetConfig(**cfg))


def randomise(model):
    """Zero-initialised output layers would hide every difference; give all weights random values."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_output_shape_concat_channels_and_heads_by_width():
    unet = tiny(out_channels=4, concat_channels=2, head_dim=4)
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 999]), concat=torch.randn(2, 2, 8, 8))
    assert out.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="2 concat channels"):
        unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 999]))
    assert unet.down[0][1].blocks[0].attn1.heads == 2  # 8 channels / 4 per head


def test_fresh_unet_outputs_zero_so_training_starts_from_the_mean():
    assert tiny()(torch.randn(1, 3, 8, 8), torch.tensor([3])).abs().max() == 0


def test_cross_attention_uses_the_context_and_y_shifts_the_embedding():
    unet = randomise(tiny(context_dim=6))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 10])
    ctx = torch.randn(2, 5, 6)
    base = unet(x, t, context=ctx)
    assert not torch.allclose(base, unet(x, t, context=ctx.flip(0)))
    assert torch.allclose(base[0], unet(x[:1], t[:1], context=ctx[:1])[0], atol=1e-5)  # samples do not mix
    assert not torch.allclose(base, unet(x, t, context=ctx, y=torch.randn(2, 32)))
    with pytest.raises(ValueError, match="context"):
        unet(x, t)


def test_fully_convolutional_and_size_checked():
    unet = randomise(tiny(attention="plain"))
    assert unet(torch.randn(1, 3, 12, 20), torch.tensor([5])).shape == (1, 3, 12, 20)
    with pytest.raises(ValueError, match="multiple of 2"):
        unet(torch.randn(1, 3, 9, 8), torch.tensor([5]))


def test_grad_checkpointing_gives_the_same_gradients():
    unet = randomise(tiny(context_dim=6)).train()
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([1, 500]), torch.randn(2, 3, 6)
    unet(x, t, context=ctx).square().mean().backward()
    plain = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    unet.set_grad_checkpointing(True)
    unet(x, t, context=ctx).square().mean().backward()
    for a, p in zip(plain, unet.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)


def test_channels_last_gives_the_same_output_and_stays_channels_last():
    unet = randomise(tiny(context_dim=6))
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([1, 500]), torch.randn(2, 3, 6)
    ref = unet(x, t, context=ctx)
    unet = unet.to(memory_format=torch.channels_last)
    out = unet(x.to(memory_format=torch.channels_last), t, context=ctx)
    assert torch.allclose(ref, out, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_stays_close_to_fp32():
    unet = randomise(tiny(context_dim=6))
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([1, 500]), torch.randn(2, 3, 6)
    ref = unet(x, t, context=ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = unet(x, t, context=ctx).float()
    assert (low - ref).norm() / ref.norm() < 0.03


def test_bf16_autocast_gradients_point_the_same_way_as_fp32():
    unet = randomise(tiny(context_dim=6)).train()
    x, t, ctx = torch.randn(4, 3, 8, 8), torch.tensor([1, 200, 500, 999]), torch.randn(4, 3, 6)
    target = torch.randn(4, 3, 8, 8)
    grads = []
    for enabled in (False, True):
        unet.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = unet(x, t, context=ctx)
        (out.float() - target).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_position_encoding_tells_attention_where_it_is():
    """On a constant map a SpatialTransformer's output is the same everywhere; with the 2-D position
    encoding it differs from cell to cell (so a box's coordinates can address a place)."""
    from ldmcli.nn.attention import SpatialTransformer

    x = torch.ones(1, 8, 4, 4)
    for pe in (False, True):
        block = randomise(SpatialTransformer(8, 2, 4, position_encoding=pe))
        with torch.no_grad():
            out = block(x)
        spread = (out - out[..., :1, :1]).abs().max()
        assert (spread > 1e-3) == pe, (pe, spread)
