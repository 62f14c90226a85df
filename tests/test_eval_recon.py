"""`ldm eval --recon`: figures checked against independent computations, JSON keys, saved pairs."""

import json
import math

import numpy as np
import pytest
import torch
from ae_fixtures import blob_shards, png_array, tiny_ae  # noqa: F401 (fixtures)
from conftest import run_cli
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from ldmcli.metrics.recon import bicubic_roundtrip, bicubic_through, high_frequency_energy, psnr, same_numbers_side, ssim


def test_psnr_and_ssim_agree_with_scikit_image():
    torch.manual_seed(0)
    a = torch.rand(3, 3, 24, 24) * 2 - 1
    b = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    ua = ((a + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    ub = ((b + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    expected = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(ua, ub)]
    np.testing.assert_allclose(psnr(a, b).numpy(), expected, rtol=1e-5)
    assert ssim(a, a).tolist() == [1.0, 1.0, 1.0]
    assert (ssim(a, b) < 0.99).all()


def test_high_frequency_energy_splits_at_nyquist_over_f():
    n = 32
    x = torch.arange(n, dtype=torch.float64)
    def wave(cycles_per_pixel):
        img = 0.5 * torch.cos(2 * math.pi * cycles_per_pixel * x)[None, :].expand(n, n)
        return img.expand(1, 3, n, n).float()
    low, high = wave(3 / 32), wave(5 / 32)  # below and above 0.5 / 4 = 0.125 cycles per pixel
    energy = high_frequency_energy(high, 4).item()
    assert energy > 100
    # Only the 8-bit rounding noise of the wave lies on the other side of the split.
    assert high_frequency_energy(low, 4).item() < 0.05 * energy
    assert high_frequency_energy(high, 2).item() < 0.05 * energy
    blurred = bicubic_roundtrip(high, 4)
    assert high_frequency_energy(blurred, 4) < 0.2 * high_frequency_energy(high, 4)


def test_same_numbers_baseline_matches_the_latent_count():
    # 3 x 16 x 16 latent: the latent grid itself; 6 x 16 x 16 = 1,536 numbers ~ 3 x 23 x 23 = 1,587.
    assert same_numbers_side(64, 4, 3) == 16 and same_numbers_side(64, 4, 6) == 23 and same_numbers_side(64, 8, 4) == 9
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16) * 2 - 1, size=64, mode="bilinear")
    assert torch.equal(bicubic_through(images, (16, 16)), bicubic_roundtrip(images, 4))
    assert (psnr(images, bicubic_through(images, (23, 23))) > psnr(images, bicubic_roundtrip(images, 4))).all()


def test_eval_recon_writes_json_and_pairs(blob_shards, tiny_ae, tmp_path):  # noqa: F811
    out_json, save = tmp_path / "recon.json", tmp_path / "pairs"
    result = run_cli("eval", blob_shards, "--recon", "--ae", tiny_ae / "model", "--json", out_json, "--save", save, "--batch-size", "16")
    assert result.exit_code == 0, result.output
    figures = json.loads(out_json.read_text())
    for name in ("psnr", "ssim", "hf_ratio", "lpips", "rfid"):
        assert name in figures and f"bicubic_{name}" in figures
    assert figures["images"] == 40 and figures["factor"] == 2 and figures["skipped"] == 0
    assert figures["lpips"] is None  # no LPIPS backbone in this environment's cache
    assert 10 < figures["psnr"] < 60 and 0 < figures["hf_ratio"] and 25 < figures["bicubic_psnr"]
    # A 3-channel latent holds as many numbers as its RGB grid: both bicubic baselines are the same resampling.
    assert figures["latent_channels"] == 3 and figures["bicubic_same_numbers_psnr"] == figures["bicubic_psnr"]
    pairs = sorted(save.iterdir())
    assert len(pairs) == 80
    orig = np.asarray(Image.open(save / "s0000.orig.png"))
    recon = np.asarray(Image.open(save / "s0000.recon.png"))
    shards = sorted(blob_shards.glob("*.tar"))
    import tarfile

    with tarfile.open(shards[0]) as tar:
        source = png_array(tar.extractfile("s0000.png").read())
    assert np.array_equal(orig, source) and recon.shape == orig.shape
    # The JSON's PSNR is the mean over the saved pairs' PSNRs.
    values = [peak_signal_noise_ratio(np.asarray(Image.open(p)), np.asarray(Image.open(str(p).replace(".orig", ".recon"))), data_range=255)
              for p in save.glob("*.orig.png")]
    assert figures["psnr"] == pytest.approx(float(np.mean(values)), rel=1e-5)


def test_eval_needs_a_metric_and_an_autoencoder(blob_shards):  # noqa: F811
    result = run_cli("eval", blob_shards)
    assert result.exit_code == 2 and "--recon" in result.output
    result = run_cli("eval", blob_shards, "--recon")
    assert result.exit_code == 2 and "--ae" in result.output
