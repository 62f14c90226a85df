"""`ldm train-classifier`: a small classifier on labelled shards, trained by the one loop."""

from __future__ import annotations

from pathlib import Path

import typer

from ldmcli.classifier import KIND, ClassifierRecipe, ClassifierTask
from ldmcli.cli.common import DEVICE, OUT, QUIET, RECIPE, RESUME, SET, prepare_run, run_training
from ldmcli.data.reader import resolve_shards


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
    run_training(cfg, run_dir, "classifier-run", lambda: ClassifierTask(cfg), resume is not None, quiet, KIND, "train-classifier")
