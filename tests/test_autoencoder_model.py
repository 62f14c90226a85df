"""Autoencoder parts checked against closed forms and independent computations."""

import pytest
import torch
import torch.nn.functional as F

from ldmcli.autoencoder.config import AutoencoderConfig, LossConfig
from ldmcli.autoencoder.discriminator import PatchDiscriminator
from ldmcli.autoencoder.losses import AutoencoderLoss, adaptive_weight, discriminator_loss, feature_matching, generator_adversarial
from ldmcli.autoencoder.model import Autoencoder, DiagonalGaussian, fold, unfold
from ldmcli.autoencoder.quantize import VectorQuantizer
from ldmcli.autoencoder.tiling import tile_starts, tiled, tiled_decode, tiled_encode
from ldmcli.errors import UserError


def tiny(**kw) -> AutoencoderConfig:
    return AutoencoderConfig(**{"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "n_embed": 16, **kw})


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
@pytest.mark.parametrize("mult,f", [([1, 2], 2), ([1, 2, 2], 4), ([1, 1, 2, 2], 8)])
def test_shapes_follow_the_channel_multipliers(bottleneck, mult, f):
    model = Autoencoder(tiny(bottleneck=bottleneck, channel_mult=mult, z_channels=4, embed_dim=4, attn_factors=[f]))
    x = torch.randn(2, 3, 32, 32)
    z = model.encode(x)
    assert model.factor == f and z.shape == (2, 4, 32 // f, 32 // f)
    assert model.decode(z).shape == x.shape
    recon, aux = model(x)
    assert recon.shape == x.shape
    assert set(aux) == ({"kl"} if bottleneck == "kl" else {"codebook_loss", "perplexity", "codes_used"})


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    moments = torch.randn(3, 8, 4, 4)
    post = DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.kl(), expected, rtol=1e-5, atol=1e-5)
    samples = torch.stack([post.sample() for _ in range(4000)])
    five_sigma = 5 * torch.exp(0.5 * logvar) / 4000**0.5  # of a mean of 4000 draws, per element
    assert ((samples.mean(0) - mean).abs() < five_sigma).all()


def test_kl_encode_is_the_posterior_mean_and_sample_differs():
    model = Autoencoder(tiny()).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        mean = model.posterior(x).mean
        assert torch.equal(model.encode(x), mean)
        assert not torch.equal(model.encode(x, sample=True), mean)


def test_vq_picks_the_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(32, 4, beta=0.25, restart=False).eval()
    z = torch.randn(2, 4, 5, 5, requires_grad=True)
    zq, loss, stats = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(flat, vq.embedding.weight.detach()).argmin(1)
    torch.testing.assert_close(zq.detach().permute(0, 2, 3, 1).reshape(-1, 4), vq.embedding.weight.detach()[nearest])
    expected = 1.25 * F.mse_loss(zq.detach(), z.detach())
    torch.testing.assert_close(loss, expected)
    zq.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    counts = torch.bincount(nearest, minlength=32).float()
    p = counts / counts.sum()
    torch.testing.assert_close(stats["perplexity"], torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def test_vq_ema_codebook_moves_to_the_mean_of_its_vectors():
    vq = VectorQuantizer(2, 2, mode="ema", decay=0.0, restart=False).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    z = torch.tensor([[2.0, 1.0], [4.0, -1.0], [-3.0, 0.0]]).t().reshape(1, 2, 1, 3)
    vq(z)
    torch.testing.assert_close(vq.embedding.weight, torch.tensor([[3.0, 0.0], [-3.0, 0.0]]), atol=1e-3, rtol=0)
    assert not vq.embedding.weight.requires_grad


def test_vq_dead_codes_restart_on_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, dead_usage=0.1).train()
    z = torch.full((1, 2, 4, 4), 5.0) + 0.01 * torch.randn(1, 2, 4, 4)
    for _ in range(6):
        vq(z)
    near = (vq.embedding.weight - 5.0).abs().max(dim=1).values < 0.5
    assert near.sum() >= 7, vq.embedding.weight


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    out = x @ w
    nll, g = out.pow(2).sum(), -out.sum() * 0.1
    a = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    b = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    torch.testing.assert_close(adaptive_weight(nll, g, w), a / (b + 1e-4))
    assert adaptive_weight(nll, g * 1e-12, w, max_weight=7.0) == 7.0


def test_gan_losses_closed_forms():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss(real, fake, "hinge") == pytest.approx(0.5 * (0.25 + 0.75))
    ns = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert discriminator_loss(real, fake, "non_saturating") == pytest.approx(float(ns))
    assert generator_adversarial(fake, "hinge") == pytest.approx(0.75)
    assert generator_adversarial(fake, "non_saturating") == pytest.approx(float(F.softplus(-fake).mean()))


def test_discriminator_judges_patches_and_exposes_features():
    disc = PatchDiscriminator(3, 8, n_layers=3)
    logits, feats = disc(torch.randn(2, 3, 64, 64), features=True)
    assert logits.shape == (2, 1, 6, 6) and len(feats) == 4
    fm = feature_matching(feats, [f + 1 for f in feats])
    torch.testing.assert_close(fm, torch.full((2,), 4.0))


def test_generator_loss_terms_and_gan_switch_on_at_disc_start():
    torch.manual_seed(0)
    cfg = LossConfig(perceptual="none", disc_start=5, kl_weight=1e-3)
    criterion = AutoencoderLoss(cfg, "kl")
    model, disc = Autoencoder(tiny()), PatchDiscriminator(3, 8, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, aux = model(x)
    logvar = torch.tensor(0.0)
    before, logs = criterion.generator(x, recon, aux, logvar, disc, model.last_layer(), step=4)
    expected = (x - recon).abs().sum() / 2 + 1e-3 * aux["kl"].mean()
    torch.testing.assert_close(before, expected)
    assert "g_loss" not in logs
    after, logs = criterion.generator(x, recon, aux, logvar, disc, model.last_layer(), step=5)
    assert {"g_loss", "d_weight"} <= set(logs)
    torch.testing.assert_close(after, expected + logs["d_weight"] * logs["g_loss"])


def test_tile_starts_cover_the_whole_length():
    for length, tile, overlap, mult in [(100, 32, 8, 1), (96, 32, 8, 4), (64, 64, 8, 4), (72, 32, 8, 8)]:
        starts = tile_starts(length, tile, overlap, mult)
        assert starts[0] == 0 and starts[-1] + tile >= length and all(s % mult == 0 for s in starts)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiling_a_local_function_reproduces_it_exactly():
    x = torch.randn(1, 2, 50, 70)
    down = lambda t: F.avg_pool2d(t, 2)
    torch.testing.assert_close(tiled(down, x, 16, 4, 0.5, multiple=2), down(x))
    up = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")
    torch.testing.assert_close(tiled(up, x, 16, 4, 4.0), up(x))


def test_tiled_autoencoder_is_close_to_untiled():
    torch.manual_seed(0)
    model = Autoencoder(tiny(mid_attention=False)).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        z = model.encode(x)
        zt = tiled_encode(model, x, tile=32, overlap=16)
        assert zt.shape == z.shape
        assert (zt - z).abs().mean() < 0.25 * z.abs().mean()  # GroupNorm sees each tile alone
        assert tiled_decode(model, z, tile=16, overlap=8).shape == x.shape


def test_logvar_init_sets_the_posterior_log_variance_bias_only():
    torch.manual_seed(0)
    model = Autoencoder(tiny(logvar_init=-6.0))
    bias = model.quant_conv.bias
    assert (bias[3:] == -6.0).all() and (bias[:3] != -6.0).all()
    post = model.posterior(torch.randn(2, 3, 16, 16))
    assert post.std.mean() < 0.1  # early samples are nearly the mean
    no_qc = Autoencoder(tiny(logvar_init=-4.0, quant_conv=False, embed_dim=3))
    assert (no_qc.encoder.conv_out.bias[3:] == -4.0).all()


def test_shortcuts_fold_and_unfold_are_box_filter_and_nearest_for_rgb_latents():
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fold(x, 4, 3), F.avg_pool2d(x, 4))
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(unfold(z, 4, 3), F.interpolate(z, scale_factor=4, mode="nearest"))
    # 48 folded channels averaged in 4 groups of 12; unfolding 4 channels repeats each over its group
    assert fold(x, 4, 4).shape == (2, 4, 4, 4) and unfold(torch.randn(2, 4, 4, 4), 4, 3).shape == (2, 3, 16, 16)
    torch.testing.assert_close(fold(x, 4, 4)[:, 0], F.pixel_unshuffle(x, 4)[:, :12].mean(dim=1))


def test_bicubic_unfold_interpolates_each_image_channels_block_means():
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(unfold(z, 4, 3, "bicubic"), F.interpolate(z, scale_factor=4, mode="bicubic"))
    z4 = torch.randn(2, 4, 4, 4)  # 4 latent channels over 3 image channels: the nearest blocks' means, interpolated
    means = F.avg_pool2d(unfold(z4, 4, 3), 4)
    torch.testing.assert_close(unfold(z4, 4, 3, "bicubic"), F.interpolate(means, scale_factor=4, mode="bicubic"))
    smooth = F.interpolate(torch.randn(1, 3, 2, 2), size=(8, 8), mode="bilinear", align_corners=True)
    assert unfold(smooth, 4, 3, "bicubic").diff(dim=-1).abs().max() < unfold(smooth, 4, 3).diff(dim=-1).abs().max() / 2


@pytest.mark.parametrize("bottleneck", ["kl", "vq"])
def test_shortcut_autoencoder_starts_as_the_box_filter_codec_and_trains(bottleneck):
    torch.manual_seed(0)
    model = Autoencoder(tiny(bottleneck=bottleneck, channel_mult=[1, 2, 2], shortcut=True, logvar_init=-6.0))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    box = F.avg_pool2d(x, 4)
    torch.testing.assert_close(model.encode(x), box)
    if bottleneck == "kl":
        torch.testing.assert_close(model.decode(box), F.interpolate(box, scale_factor=4))
        bicubic = Autoencoder(tiny(channel_mult=[1, 2, 2], shortcut=True, shortcut_upsample="bicubic"))
        torch.testing.assert_close(bicubic.decode(box), F.interpolate(box, scale_factor=4, mode="bicubic"))
    recon, _ = model(x)
    recon.sub(x).abs().mean().backward()
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="divisible"):
        Autoencoder(tiny(channel_mult=[1, 2], shortcut=True, z_channels=5, embed_dim=5))


def test_feature_matching_and_discriminator_wait_for_feature_matching_start():
    torch.manual_seed(0)
    criterion = AutoencoderLoss(LossConfig(perceptual="none", feature_matching_weight=0.1, feature_matching_start=3, disc_start=10), "kl")
    model, disc = Autoencoder(tiny()), PatchDiscriminator(3, 8, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, aux = model(x)
    _, logs = criterion.generator(x, recon, aux, torch.tensor(0.0), disc, model.last_layer(), step=2)
    assert "feature_matching" not in logs and not criterion.disc_trains(2)
    _, logs = criterion.generator(x, recon, aux, torch.tensor(0.0), disc, model.last_layer(), step=3)
    assert "feature_matching" in logs and criterion.disc_trains(3) and "g_loss" not in logs


@pytest.mark.parametrize("joint", [False, True])
def test_joint_batch_lets_the_discriminator_see_a_fainter_batch(joint):
    """A decoded batch at half the real one's amplitude: with its own BatchNorm statistics it reaches the head
    rescaled to the real batch's (the first conv's bias zeroed, every layer is then homogeneous; weights at
    unit fan-in scale so BatchNorm's epsilon is negligible), so the two logits agree; through one shared batch
    they do not. The generator's terms still reach the decoded images, with feature matching or without."""
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, 8, 2)
    for conv in (m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight)
    disc.layers[0][0].bias.data.zero_()
    criterion = AutoencoderLoss(LossConfig(perceptual="none", feature_matching_weight=1.0, disc_start=0, disc_joint_batch=joint), "kl")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    _, logs = criterion.discriminator(disc, x, 0.5 * x)
    gap = (logs["logits_real"] - logs["logits_fake"]).abs().item()
    assert (gap > 1e-3) if joint else (gap < 1e-4)
    recon = (0.5 * x).requires_grad_()
    loss, logs = criterion.generator(x, recon, {"kl": torch.zeros(4)}, torch.tensor(0.0), disc, recon, step=1)
    loss.backward()
    assert {"feature_matching", "g_loss"} <= set(logs) and recon.grad.abs().sum() > 0
    adversarial_only = AutoencoderLoss(LossConfig(perceptual="none", disc_start=0, disc_joint_batch=joint), "kl")
    recon.grad = None
    loss, logs = adversarial_only.generator(x, recon, {"kl": torch.zeros(4)}, torch.tensor(0.0), disc, recon, step=1)
    loss.backward()
    assert "feature_matching" not in logs and "g_loss" in logs and recon.grad.abs().sum() > 0
