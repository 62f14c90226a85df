"""The multi-resolution spectral term against numpy and the property it is there for."""

import numpy as np
import torch

from ldmcli.autoencoder.config import LossConfig
from ldmcli.autoencoder.losses import AutoencoderLoss, spectral_distance


def _numpy_reference(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)
    window = np.outer(hann, hann)
    hop = size // 2
    out = []
    for a, b in zip(x, y):
        diffs = []
        for c in range(a.shape[0]):
            for i in range(0, a.shape[1] - size + 1, hop):
                for j in range(0, a.shape[2] - size + 1, hop):
                    fa = np.fft.rfft2(a[c, i:i + size, j:j + size] * window, norm="ortho")
                    fb = np.fft.rfft2(b[c, i:i + size, j:j + size] * window, norm="ortho")
                    diffs.append(np.abs(np.abs(fa) - np.abs(fb)))
        out.append(np.mean(diffs))
    return np.array(out)


def test_spectral_distance_matches_a_numpy_loop():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 20, 20), torch.rand(2, 3, 20, 20)
    got = spectral_distance(x, y, [8, 16])
    want = (_numpy_reference(x.numpy(), y.numpy(), 8) + _numpy_reference(x.numpy(), y.numpy(), 16)) / 2
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert spectral_distance(x, x, [8]).abs().max() == 0


def test_spectral_distance_prefers_texture_of_the_right_energy_to_a_flat_average():
    """Pixel L1 ranks a flat patch above an independent draw of the same texture; the spectral term reverses it."""
    torch.manual_seed(0)
    texture = torch.randn(4, 3, 32, 32) * 0.3
    other_draw = torch.randn(4, 3, 32, 32) * 0.3
    flat = torch.zeros_like(texture)
    assert (texture - flat).abs().mean() < (texture - other_draw).abs().mean()
    assert (spectral_distance(texture, other_draw, [8, 16]) < 0.75 * spectral_distance(texture, flat, [8, 16])).all()


def test_windows_larger_than_the_image_use_the_whole_image():
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(spectral_distance(x, y, [16]), spectral_distance(x, y, [8]))


def test_the_generator_loss_carries_the_spectral_term_only_when_weighted():
    torch.manual_seed(0)
    x, recon = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16, requires_grad=True)
    aux = {"kl": torch.zeros(2)}
    off = AutoencoderLoss(LossConfig(perceptual="none"), "kl")
    on = AutoencoderLoss(LossConfig(perceptual="none", spectral_weight=2.0), "kl")
    loss_off, logs_off = off.generator(x, recon, aux, torch.tensor(0.0), None, None, step=0)
    loss_on, logs_on = on.generator(x, recon, aux, torch.tensor(0.0), None, None, step=0)
    assert "spectral" not in logs_off
    expected = 2.0 * spectral_distance(x, recon, [8, 16]).sum() * 3 * 16 * 16 / 2
    torch.testing.assert_close(loss_on - loss_off, expected)
    loss_on.backward()
    assert recon.grad.abs().sum() > 0
