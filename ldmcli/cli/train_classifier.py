"""`ldm train-classifier`: a small classifier on labelled shards, trained by the one loop."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ldmcli.classifier import KIND, ClassifierRecipe, ClassifierTask
from ldmcli.cli.common import DEVICE, OUT, QUIET, RECIPE, RESUME, SET, prepare_run, write_run_config
from ldmcli.data.reader import resolve_shards
from ldmcli.train import distributed, train


def train_classifier(
    shards: list[str] = typer.Argument(None, help="Image shards with a `cls` key: paths, globs, {a..b} or pipe: URLs."),
    recipe: Path = RECIPE,
    sets: list[str] = SET,
    out: Path = OUT,
    resume: Path = RESUME,
    device: str = DEVICE,
    quiet: bool = QUIET,
) -> None:
    """Train an image classifier (used for offline domain metrics).

    Example: ldm train-classifier data/digits --recipe recipes/classifier-digits.toml --out runs/clf
    """
    cfg, run_dir = prepare_run(ClassifierRecipe, "classifier-run", shards or [], recipe, sets, out, resume, device)
    cfg.data.shards = resolve_shards(cfg.data.shards)
    env = distributed.setup(cfg.train.device)
    try:
        write_run_config(cfg, run_dir, "classifier-run", env.is_main)
        torch.manual_seed(cfg.train.seed)
        result = train(ClassifierTask(cfg), cfg.train, cfg.data, run_dir, env, resume=resume is not None, quiet=quiet, title=KIND)
    finally:
        distributed.teardown()
    if env.is_main:
        if result.interrupted:
            typer.echo(f"stopped at step {result.step}; checkpoint saved. Continue with: ldm train-classifier --resume {run_dir}")
        else:
            typer.echo(f"trained {result.step} steps; model in {result.model_dir}")
