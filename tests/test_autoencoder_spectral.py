"""The multi-resolution spectral term against numpy and the property it is there for."""

import numpy as np
import torch

from ldmcli.autoencoder.config import LossConfig
from ldmcli.autoencoder.losses import LOG_MAGNITUDE_FLOOR, AutoencoderLoss, spectral_distances


def _numpy_reference(x: np.ndarray, y: np.ndarray, size: int, log: bool) -> np.ndarray:
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
                    ma, mb = np.abs(fa), np.abs(fb)
                    if log:
                        ma, mb = np.log(ma + LOG_MAGNITUDE_FLOOR), np.log(mb + LOG_MAGNITUDE_FLOOR)
                    diffs.append(np.abs(ma - mb))
        out.append(np.mean(diffs))
    return np.array(out)


def test_spectral_distance_matches_a_numpy_loop():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 20, 20), torch.rand(2, 3, 20, 20)
    for got, log in zip(spectral_distances(x, y, [8, 16]), (False, True)):
        want = (_numpy_reference(x.numpy(), y.numpy(), 8, log) + _numpy_reference(x.numpy(), y.numpy(), 16, log)) / 2
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert all(d.abs().max() == 0 for d in spectral_distances(x, x, [8]))


def test_spectral_distance_prefers_texture_of_the_right_energy_to_a_flat_average():
    """Pixel L1 ranks a flat patch above an independent draw of the same texture; both spectral terms reverse it."""
    torch.manual_seed(0)
    texture = torch.randn(4, 3, 32, 32) * 0.3
    other_draw = torch.randn(4, 3, 32, 32) * 0.3
    flat = torch.zeros_like(texture)
    assert (texture - flat).abs().mean() < (texture - other_draw).abs().mean()
    for draw, blank in zip(spectral_distances(texture, other_draw, [8, 16]), spectral_distances(texture, flat, [8, 16])):
        assert (draw < 0.75 * blank).all()


def test_windows_larger_than_the_image_use_the_whole_image():
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(spectral_distances(x, y, [16]), spectral_distances(x, y, [8]))


def test_the_generator_loss_carries_the_spectral_term_only_when_weighted():
    torch.manual_seed(0)
    x, recon = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16, requires_grad=True)
    aux = {"kl": torch.zeros(2)}
    off = AutoencoderLoss(LossConfig(perceptual="none"), "kl")
    on = AutoencoderLoss(LossConfig(perceptual="none", spectral_weight=2.0, spectral_log_weight=0.5), "kl")
    loss_off, logs_off = off.generator(x, recon, aux, torch.tensor(0.0), None, None, step=0)
    loss_on, logs_on = on.generator(x, recon, aux, torch.tensor(0.0), None, None, step=0)
    assert "spectral" not in logs_off and "spectral_log" in logs_on
    linear, log = spectral_distances(x, recon, [8, 16])
    expected = (2.0 * linear + 0.5 * log).sum() * 3 * 16 * 16 / 2
    torch.testing.assert_close(loss_on - loss_off, expected)
    loss_on.backward()
    assert recon.grad.abs().sum() > 0
