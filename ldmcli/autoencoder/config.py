"""Typed configs of the perceptual autoencoder: the model (saved in its model dir) and the training recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ldmcli.config import DataConfig, TrainConfig

KIND = "autoencoder"
RUN_KIND = "autoencoder-run"


@dataclass
class AutoencoderConfig:
    """Encoder/decoder widths and the bottleneck; the model dir's config.json holds exactly this.

    f = 2^(len(channel_mult) - 1). `attn_factors` lists the downsampling factors whose blocks get
    self-attention (the paper's f16 model: [16]); the mid blocks always have it when `mid_attention`.
    """

    bottleneck: Literal["kl", "vq"] = "kl"
    in_channels: int = 3
    channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    attn_factors: list[int] = field(default_factory=list)
    mid_attention: bool = True
    dropout: float = 0.0
    z_channels: int = 3
    embed_dim: int = 3
    quant_conv: bool = True
    # VQ only: codebook size, commitment beta, "learned" (paper) or "ema" codebook, dead-code restart.
    n_embed: int = 8192
    beta: float = 0.25
    codebook: Literal["learned", "ema"] = "learned"
    ema_decay: float = 0.99
    restart_dead_codes: bool = True
    dead_code_usage: float = 0.03
    # KL only: initial bias of the posterior's log-variance outputs. At 0 the first samples carry
    # unit-variance noise on latents of much smaller scale, which swamps the signal early in a short
    # training; e.g. -6 starts with std 0.05 (the KL term still pulls it toward 0 as training goes on).
    # Only the initialisation changes: weights, layout and interop are the same.
    logvar_init: float = 0.0
    # Residual autoencoding (DC-AE, Chen et al. 2025): parameter-free shortcuts around the networks. The
    # latent adds the image folded onto the latent grid (space-to-channel, channel groups averaged), the
    # image adds the latent unfolded (channels repeated, channel-to-space). At initialisation the model
    # is already a box-filter codec, so a short training refines resampling instead of learning it.
    # Needs (in_channels * f^2) % embed_dim == 0; not part of the diffusers/CompVis layouts.
    shortcut: bool = False
    # How the decoder's shortcut brings the latent to full size: "nearest" (DC-AE's channel-to-space: constant
    # f x f blocks, whose edges the decoder must learn to cancel, and which an adversarial term leaves as a
    # faint grid of period f) or "bicubic" (each image channel's block mean interpolated bicubically, so the
    # decoder only adds the detail that smooth resampling misses).
    shortcut_upsample: Literal["nearest", "bicubic"] = "nearest"
    # Set on import from diffusers (e.g. 0.18215 for SD's KL-f8); `ldm encode` measures its own.
    scaling_factor: float | None = None

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass
class LossConfig:
    """L1 (+ LPIPS) with a learned output log-variance, KL or codebook term, and a PatchGAN."""

    rec: Literal["l1", "l2"] = "l1"
    perceptual: Literal["lpips", "none"] = "lpips"
    lpips_net: Literal["alex", "vgg"] = "alex"
    lpips_weights: str = ""
    perceptual_weight: float = 1.0
    learn_logvar: bool = True
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_start: int = 50001
    disc_weight: float = 0.5
    disc_loss: Literal["hinge", "non_saturating"] = "hinge"
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: float | None = None
    # Real and decoded images through the discriminator as one batch, so its BatchNorm normalises both with
    # the same statistics; in separate batches (as taming and CompVis) each is rescaled on its own, which
    # hides a blurred batch's missing feature energy from the logits and from feature matching.
    disc_joint_batch: bool = False
    feature_matching_weight: float = 0.0
    # Step where feature matching (and with it the discriminator's training) starts; a reconstruction-only
    # phase before it lets the autoencoder learn the image first, without the cost of the discriminator.
    feature_matching_start: int = 0
    max_adaptive_weight: float = 1e4
    # Multi-resolution spectral terms (losses.spectral_distances): L1 between the linear / log magnitude
    # spectra of Hann-windowed patches of these sizes, so unpredictable texture is reproduced with its
    # energy rather than averaged flat. Need no pretrained weights; 0 turns each off.
    spectral_weight: float = 0.0
    spectral_log_weight: float = 0.0
    spectral_windows: list[int] = field(default_factory=lambda: [8, 16])


@dataclass
class AutoencoderRecipe:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=256))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=4.5e-6 * 12, betas=(0.5, 0.9), batch_size=12, grad_accum=2, grad_clip=0.0))
    preview_images: int = 8
    # Train on random square crops of this side cut from each batch image (0: whole images). The model
    # is convolutional, so crops of 64 px images teach it nearly as well at a quarter of the cost.
    train_crop: int = 0
