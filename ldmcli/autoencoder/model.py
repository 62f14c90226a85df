"""The first stage: a convolutional encoder/decoder with a KL or VQ bottleneck (paper §3.1).

The layout mirrors CompVis' `Encoder`/`Decoder` (and diffusers' AutoencoderKL/VQModel) block for block,
so their weights map one to one (see ldmcli/interop). `encode` gives the latents diffusion runs on:
the posterior mean for KL, the pre-quantisation map for VQ (its quantiser belongs to the decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.quantize import VectorQuantizer
from ldmcli.errors import UserError
from ldmcli.nn.blocks import Downsample, ResBlock, SelfAttention2d, Upsample, conv_layout, norm


class Level(nn.Module):
    """ResBlocks (each optionally followed by attention) at one resolution, then a resample or nothing."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attention: bool, dropout: float, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, dropout=dropout) for i in range(n_blocks))
        self.attns = nn.ModuleList(SelfAttention2d(c_out) for _ in range(n_blocks)) if attention else None
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_layout(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attns is not None:
                x = self.attns[i](x)
        return x if self.resample is None else self.resample(x)


class Mid(nn.Module):
    def __init__(self, channels: int, attention: bool, dropout: float):
        super().__init__()
        self.block1 = ResBlock(channels, dropout=dropout)
        self.attn = SelfAttention2d(channels) if attention else nn.Identity()
        self.block2 = ResBlock(channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        levels, c_in = [], cfg.channels
        for i, c in enumerate(widths):
            last = i == len(widths) - 1
            down = None if last else Downsample(c, pad_asymmetric=True)
            levels.append(Level(c_in, c, cfg.num_res_blocks, 2**i in cfg.attn_factors, cfg.dropout, down))
            c_in = c
        self.down = nn.ModuleList(levels)
        self.mid = Mid(c_in, cfg.mid_attention, cfg.dropout)
        self.norm_out = norm(c_in)
        self.conv_out = nn.Conv2d(c_in, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(conv_layout(x))
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        c_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = Mid(c_in, cfg.mid_attention, cfg.dropout)
        levels = []
        for i in reversed(range(len(widths))):
            up = Upsample(widths[i]) if i > 0 else None
            levels.append(Level(c_in, widths[i], cfg.num_res_blocks + 1, 2**i in cfg.attn_factors, cfg.dropout, up))
            c_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """The KL posterior: mean and clamped log-variance split from the encoder's moments (in fp32)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.float().chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over a sample's latent elements: one value per sample."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def fold(x: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """The shortcut into the latent: space-to-channel by `factor`, then groups averaged to `channels`."""
    h = F.pixel_unshuffle(x, factor)
    return h.unflatten(1, (channels, h.shape[1] // channels)).mean(dim=2)


def unfold(z: torch.Tensor, factor: int, channels: int, mode: str = "nearest") -> torch.Tensor:
    """The shortcut out of the latent: each channel repeated over its group, then channel-to-space; with
    mode "bicubic" each image channel's f x f block means are interpolated instead of held constant."""
    groups = z.repeat_interleave(channels * factor * factor // z.shape[1], dim=1)
    if mode == "nearest":
        return F.pixel_shuffle(groups, factor)
    means = groups.unflatten(1, (channels, factor * factor)).mean(dim=2)  # what channel-to-space would hold per block
    return F.interpolate(means, scale_factor=factor, mode=mode, align_corners=False)


class Autoencoder(nn.Module):
    """Encoder -> quant_conv -> [KL sample | VQ] -> post_quant_conv -> Decoder."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        kl = cfg.bottleneck == "kl"
        moments = 2 * cfg.embed_dim if kl else cfg.embed_dim
        self.encoder = Encoder(cfg, 2 * cfg.z_channels if kl else cfg.z_channels)
        z_out = 2 * cfg.z_channels if kl else cfg.z_channels
        self.quant_conv = nn.Conv2d(z_out, moments, 1) if cfg.quant_conv else None
        if not cfg.quant_conv and z_out != moments:
            raise UserError("model.embed_dim must equal model.z_channels when model.quant_conv is false")
        if cfg.shortcut and (cfg.in_channels * cfg.factor**2) % cfg.embed_dim:
            raise UserError(f"model.shortcut needs in_channels * f^2 ({cfg.in_channels * cfg.factor**2}) divisible by model.embed_dim ({cfg.embed_dim})")
        self.quantize = None if kl else VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.codebook, cfg.ema_decay, cfg.restart_dead_codes, cfg.dead_code_usage)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1) if cfg.quant_conv else None
        self.decoder = Decoder(cfg)
        self._init_outputs()

    @torch.no_grad()
    def _init_outputs(self) -> None:
        """The posterior's log-variance bias at `logvar_init`; with shortcuts, the mean rows and the decoder's
        last layer at zero, so the untrained model is exactly the box-filter codec (box down, nearest or
        bicubic up)."""
        cfg, e = self.config, self.config.embed_dim
        out = self.quant_conv if self.quant_conv is not None else self.encoder.conv_out
        if cfg.bottleneck == "kl" and cfg.logvar_init:
            out.bias[e:].fill_(cfg.logvar_init)
        if cfg.shortcut:
            out.weight[:e].zero_()
            out.bias[:e].zero_()
            self.decoder.conv_out.weight.zero_()
            self.decoder.conv_out.bias.zero_()

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        h = h if self.quant_conv is None else self.quant_conv(h)
        if not self.config.shortcut:
            return h
        e = self.config.embed_dim
        mean = h[:, :e].float() + fold(x.float(), self.factor, e)  # in fp32: bf16 would round the image itself
        return torch.cat([mean, h[:, e:].float()], dim=1)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        if self.quantize is not None:
            raise TypeError("a VQ autoencoder has no Gaussian posterior")
        return DiagonalGaussian(self.moments(x))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents for diffusion: KL posterior mean (or a sample), VQ pre-quantisation map."""
        if self.quantize is not None:
            return self.moments(x)
        post = self.posterior(x)
        return post.sample(generator) if sample else post.mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> image in [-1, 1] (not clamped); VQ latents are snapped to the codebook first."""
        if self.quantize is not None:
            z = self.quantize(z)[0]
        return self._decode(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.decoder.conv_in.weight.dtype)
        out = self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))
        if not self.config.shortcut:
            return out
        return out.float() + unfold(z.float(), self.factor, self.config.in_channels, self.config.shortcut_upsample)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction and the bottleneck's terms: `kl` per sample (KL) or `codebook_loss`, `perplexity` (VQ)."""
        if self.quantize is None:
            post = self.posterior(x)
            z = post.sample() if sample else post.mean
            return self.decode(z), {"kl": post.kl()}
        zq, codebook_loss, stats = self.quantize(self.moments(x))
        return self._decode(zq), {"codebook_loss": codebook_loss, **stats}

    def last_layer(self) -> torch.Tensor:
        """The weight where the adversarial term's weight is measured (the paper's adaptive weight)."""
        return self.decoder.conv_out.weight
