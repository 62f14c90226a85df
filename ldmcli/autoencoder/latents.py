"""Latent shards' stats.json: the scale factor diffusion needs, and the autoencoder the latents belong to.

Latents only mean something to the decoder that can turn them back into images, so stats.json names
that autoencoder by a hash of its weights, and every consumer checks it before training or sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ldmcli.errors import UserError
from ldmcli.modeldir import weights_id

STATS_FILE = "stats.json"
STATS_VERSION = 1


class LatentMoments:
    """Per-channel sums of latents in float64, reducible over ranks, so every rank gets the same stats."""

    def __init__(self, channels: int):
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sumsq = torch.zeros(channels, dtype=torch.float64)
        self.count = 0.0

    def add(self, z: torch.Tensor) -> None:
        z = z.detach().double().cpu()
        self.sum += z.sum(dim=(0, 2, 3))
        self.sumsq += z.pow(2).sum(dim=(0, 2, 3))
        self.count += z.shape[0] * z.shape[2] * z.shape[3]

    def vector(self) -> list[float]:
        return self.sum.tolist() + self.sumsq.tolist() + [self.count]

    def summary(self, totals: list[float]) -> dict:
        c = len(self.sum)
        s, sq, n = torch.tensor(totals[:c]), torch.tensor(totals[c : 2 * c]), max(totals[-1], 1.0)
        mean, var = s.sum() / (n * c), sq.sum() / (n * c) - (s.sum() / (n * c)) ** 2
        channel_mean = s / n
        channel_std = (sq / n - channel_mean**2).clamp(min=0).sqrt()
        std = float(var.clamp(min=1e-12).sqrt())
        return {
            "mean": float(mean),
            "std": std,
            "scale_factor": 1.0 / std,
            "channel_mean": channel_mean.tolist(),
            "channel_std": channel_std.tolist(),
        }


def write_stats(out_dir: Path, stats: dict) -> Path:
    path = Path(out_dir) / STATS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"version": STATS_VERSION, **stats}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_stats(latent_dir: Path | str) -> dict:
    """stats.json beside latent shards (pass the dir or the stats file)."""
    path = Path(latent_dir)
    if path.is_dir():
        path = path / STATS_FILE
    if not path.is_file():
        raise UserError(f"no {STATS_FILE} in {path.parent}: latent shards are made by `ldm encode`")
    try:
        stats = json.loads(path.read_text())
        stats["autoencoder"]["id"], stats["scale_factor"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not a latent stats file written by `ldm encode`") from None
    return stats


def check_stats(stats: dict, ae_dir: Path | str, where: str = "the latents") -> None:
    """Refuse latents encoded by another autoencoder than the one in `ae_dir`."""
    expected = weights_id(ae_dir)
    found = stats["autoencoder"]["id"]
    if found != expected:
        origin = stats["autoencoder"].get("path", "?")
        raise UserError(
            f"{where} were encoded by autoencoder {found} ({origin}), not by {ae_dir} ({expected}); "
            f"re-encode them with: ldm encode SHARDS --ae {ae_dir} --out DIR"
        )
