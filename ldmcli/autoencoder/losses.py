"""The first stage's objective (paper §3.1 and App. G; CompVis `contperceptual.py`, taming `vqperceptual.py`).

Generator: nll = (|x - x̂| + w_p·LPIPS + w_fm·feature matching + w_s·spectral + w_sl·log spectral) / exp(s) + s
with a learned scalar s, plus kl_weight·KL (KL: sums per sample, as CompVis) or codebook_weight·codebook
loss (VQ: means, as taming), plus the adversarial term, weighted adaptively so that its gradient at the
decoder's last layer is as large as the reconstruction's. Discriminator: hinge or non-saturating loss on
real vs decoded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.autoencoder.config import LossConfig
from ldmcli.autoencoder.lpips_loader import load_lpips
from ldmcli.errors import UserError


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """‖∇_last nll‖ / (‖∇_last g‖ + 1e-4), clamped to [0, max_weight], as a constant."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def generator_adversarial(logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -logits_fake.float().mean()
    return F.softplus(-logits_fake.float()).mean()


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def feature_matching(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample sum over layers of the mean |D_l(x) - D_l(x̂)|, real features held constant."""
    return sum((r.detach().float() - f.float()).abs().mean(dim=(1, 2, 3)) for r, f in zip(real, fake))


def _hann2d(size: int, device: torch.device) -> torch.Tensor:
    w = torch.hann_window(size, periodic=True, device=device)
    return w[:, None] * w[None, :]


LOG_MAGNITUDE_FLOOR = 1e-2


def spectral_distances(x: torch.Tensor, recon: torch.Tensor, windows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean L1 between local magnitude spectra, linear and log, averaged over window sizes.

    The image analogue of neural audio codecs' multi-resolution STFT loss: Hann-windowed patches of each
    size (hop half a window), orthonormal 2-D FFT, |X| compared without phase. Pixel L1 alone prefers the
    median of an unpredictable texture, i.e. a flat patch; this term asks for the texture's local energy at
    each frequency while leaving where it sits to the pixel term. Orthonormal, so the linear distance is on
    the pixel L1's scale; it weights each frequency by its amplitude, so the faint high frequencies that
    blurring loses cost little there. The log distance, log(|X| + floor) with a floor near 8-bit
    quantisation noise in [-1, 1] units, weights a lost octave the same at every amplitude.
    """
    linear = torch.zeros(x.shape[0], device=x.device)
    log = torch.zeros(x.shape[0], device=x.device)
    for size in windows:
        size = min(size, x.shape[-2], x.shape[-1])
        window = _hann2d(size, x.device)
        hop = max(size // 2, 1)
        mags = []
        for img in (x, recon):
            patches = img.float().unfold(2, size, hop).unfold(3, size, hop)
            mags.append(torch.fft.rfft2(patches * window, norm="ortho").abs())
        dims = (1, 2, 3, 4, 5)
        linear = linear + (mags[0] - mags[1]).abs().mean(dim=dims)
        log = log + (torch.log(mags[0] + LOG_MAGNITUDE_FLOOR) - torch.log(mags[1] + LOG_MAGNITUDE_FLOOR)).abs().mean(dim=dims)
    return linear / len(windows), log / len(windows)


class LogVar(nn.Module):
    """The learned output log-variance s of the nll (one scalar, trained with the autoencoder)."""

    def __init__(self, init: float = 0.0, learn: bool = True):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)), requires_grad=learn)


class AutoencoderLoss:
    """Holds LPIPS (frozen, moved to the data's device on first use) and computes both phases' losses."""

    def __init__(self, cfg: LossConfig, bottleneck: str):
        self.cfg = cfg
        self.bottleneck = bottleneck
        self.lpips = load_lpips(cfg.lpips_net, cfg.lpips_weights or None) if cfg.perceptual == "lpips" else None
        if (cfg.spectral_weight > 0 or cfg.spectral_log_weight > 0) and (not cfg.spectral_windows or min(cfg.spectral_windows) < 2):
            raise UserError(f"loss.spectral_windows must list window sizes of at least 2 px, got {cfg.spectral_windows}")

    @property
    def uses_discriminator(self) -> bool:
        return self.cfg.disc_weight > 0 or self.cfg.feature_matching_weight > 0

    def feature_matching_on(self, step: int) -> bool:
        return self.cfg.feature_matching_weight > 0 and step >= self.cfg.feature_matching_start

    def disc_trains(self, step: int) -> bool:
        """Feature matching needs a trained discriminator from feature_matching_start; the GAN waits for disc_start."""
        return self.feature_matching_on(step) or (self.cfg.disc_weight > 0 and step >= self.cfg.disc_start)

    def perceptual(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.lpips is None:
            return torch.zeros(x.shape[0], device=x.device)
        if next(self.lpips.parameters()).device != x.device:
            self.lpips.to(x.device)
        return self.lpips(x.float(), recon.float()).flatten().float()

    def generator(
        self, x: torch.Tensor, recon: torch.Tensor, aux: dict, logvar: torch.Tensor, disc: nn.Module | None, last_layer: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        recon = recon.float()
        x = x.float()
        per_pixel = (x - recon).abs() if cfg.rec == "l1" else (x - recon).pow(2)
        logs = {"rec_loss": per_pixel.mean().detach()}
        extra = torch.zeros(x.shape[0], device=x.device)
        if self.lpips is not None and cfg.perceptual_weight > 0:
            p = self.perceptual(x, recon)
            extra = extra + cfg.perceptual_weight * p
            logs["perceptual"] = p.mean().detach()
        if cfg.spectral_weight > 0 or cfg.spectral_log_weight > 0:
            spec, log_spec = spectral_distances(x, recon, cfg.spectral_windows)
            extra = extra + cfg.spectral_weight * spec + cfg.spectral_log_weight * log_spec
            logs.update(spectral=spec.mean().detach(), spectral_log=log_spec.mean().detach())
        gan_on = disc is not None and cfg.disc_weight > 0 and step >= cfg.disc_start
        fm_on = disc is not None and self.feature_matching_on(step)
        if fm_on or gan_on:
            real_feats, logits_fake, fake_feats = self._judge_decoded(disc, x, recon, need_real=fm_on)
        if fm_on:
            fm = feature_matching(real_feats, fake_feats)
            extra = extra + cfg.feature_matching_weight * fm
            logs["feature_matching"] = fm.mean().detach()
        nll = (per_pixel + extra[:, None, None, None]) / torch.exp(logvar) + logvar
        nll_loss = nll.sum() / x.shape[0] if self.bottleneck == "kl" else nll.mean()
        loss = nll_loss
        logs["nll"] = nll_loss.detach()
        logs["logvar"] = logvar.detach()
        if self.bottleneck == "kl":
            kl = aux["kl"].mean()
            loss = loss + cfg.kl_weight * kl
            logs["kl"] = kl.detach()
        else:
            loss = loss + cfg.codebook_weight * aux["codebook_loss"]
            logs.update(codebook_loss=aux["codebook_loss"].detach(), perplexity=aux["perplexity"], codes_used=aux["codes_used"])
        if gan_on:
            g_loss = generator_adversarial(logits_fake, cfg.disc_loss)
            weight = adaptive_weight(nll_loss, g_loss, last_layer, cfg.max_adaptive_weight) * cfg.disc_weight
            loss = loss + weight * g_loss
            logs.update(g_loss=g_loss.detach(), d_weight=weight)
        return loss, logs

    def _judge_decoded(
        self, disc: nn.Module, x: torch.Tensor, recon: torch.Tensor, need_real: bool
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor, list[torch.Tensor]]:
        """The generator's view: real features (for feature matching, held constant there), decoded logits and
        features. Under disc_joint_batch the real images always come along, since they set BatchNorm's statistics."""
        if self.cfg.disc_joint_batch:
            logits, feats = disc(torch.cat([x, recon]), features=True)
            n = x.shape[0]
            return [f[:n] for f in feats], logits[n:], [f[n:] for f in feats]
        real_feats = None
        if need_real:
            with torch.no_grad():
                _, real_feats = disc(x, features=True)
        logits_fake, fake_feats = disc(recon, features=True)
        return real_feats, logits_fake, fake_feats

    def discriminator(self, disc: nn.Module, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.disc_joint_batch:
            logits_real, logits_fake = disc(torch.cat([x.detach(), recon.detach()])).chunk(2)
        else:
            logits_real = disc(x.detach())
            logits_fake = disc(recon.detach())
        loss = discriminator_loss(logits_real, logits_fake, self.cfg.disc_loss)
        return loss, {"d_loss": loss.detach(), "logits_real": logits_real.float().mean().detach(), "logits_fake": logits_fake.float().mean().detach()}
