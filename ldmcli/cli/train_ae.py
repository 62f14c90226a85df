"""`ldm train-ae`: the perceptual autoencoder (first stage) on image shards, trained by the one loop."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ldmcli.autoencoder.config import RUN_KIND, AutoencoderRecipe
from ldmcli.autoencoder.task import AutoencoderTask
from ldmcli.cli.common import DEVICE, OUT, QUIET, RECIPE, RESUME, SET, prepare_run, run_training
from ldmcli.data.reader import resolve_shards


def train_ae(
    shards: list[str] = typer.Argument(None, help="Image shards: paths, dirs, globs, {a..b} or pipe: URLs."),
    recipe: Path = RECIPE,
    sets: list[str] = SET,
    out: Path = OUT,
    resume: Path = RESUME,
    device: str = DEVICE,
    lpips_weights: Path = typer.Option(None, "--lpips-weights", help="torchvision backbone file for LPIPS (default: $TORCH_HOME/hub/checkpoints/)."),
    quiet: bool = QUIET,
) -> None:
    """Train a KL or VQ autoencoder with L1 + LPIPS + patch-GAN loss; writes RUN_DIR/model.

    Example: ldm train-ae data/photos --recipe recipes/ae-kl-f4-photos.toml --out runs/ae-kl-f4
    """
    cfg, run_dir = prepare_run(AutoencoderRecipe, RUN_KIND, shards or [], recipe, sets, out, resume, device)
    if lpips_weights is not None:
        cfg.loss.lpips_weights = str(lpips_weights)
    cfg.data.shards = resolve_shards(cfg.data.shards)
    torch.manual_seed(cfg.train.seed)
    task = AutoencoderTask(cfg)  # before the process group: a missing LPIPS file fails at once
    run_training(cfg, run_dir, RUN_KIND, lambda: task, resume is not None, quiet, "autoencoder", "train-ae")
