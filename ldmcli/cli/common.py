"""What every training command shares: recipe + overrides -> config, run dir set-up, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer

from ldmcli.config import apply_overrides, from_dict, load_config, read_toml, save_config, to_dict
from ldmcli.errors import UserError
from ldmcli.train import TrainTask, distributed, train

RECIPE = typer.Option(None, "--recipe", "-r", help="TOML recipe (see recipes/).")
SET = typer.Option([], "--set", "-s", help="Override a recipe field, e.g. --set train.lr=2e-4 (repeatable).")
OUT = typer.Option(None, "--out", "-o", help="Run dir to create (config, metrics, samples, checkpoints, model).")
RESUME = typer.Option(None, "--resume", help="Continue the run in this dir from its latest checkpoint.")
DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (overrides train.device).")
QUIET = typer.Option(False, "--quiet", "-q", help="Plain log lines instead of a progress bar.")


def prepare_run(
    recipe_cls: type,
    kind: str,
    shards: list[str],
    recipe: Path | None,
    sets: list[str],
    out: Path | None,
    resume: Path | None,
    device: str | None,
) -> tuple[Any, Path]:
    """Resolve the config of a new run (recipe, shards, --set) or of a resumed one (its config.json)."""
    if resume is not None:
        if out is not None or recipe is not None or shards:
            raise UserError("--resume takes the run dir only; its config.json holds the recipe and shards (use --set to change a field)")
        run_dir = Path(resume)
        saved = load_config(recipe_cls, run_dir / "config.json", kind)
        cfg = from_dict(recipe_cls, apply_overrides(to_dict(saved), sets))
    else:
        if out is None:
            raise UserError("--out RUN_DIR is required (or --resume RUN_DIR)")
        run_dir = Path(out)
        if (run_dir / "checkpoints").exists():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        data = read_toml(recipe) if recipe is not None else {}
        if shards:
            data.setdefault("data", {})["shards"] = list(shards)
        cfg = from_dict(recipe_cls, apply_overrides(data, sets))
        if not cfg.data.shards:
            raise UserError("no training shards: pass them as arguments or set data.shards in the recipe")
    if device is not None:
        cfg.train.device = device
    return cfg, run_dir


def write_run_config(cfg: Any, run_dir: Path, kind: str, is_main: bool) -> None:
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json", kind)


def run_training(
    cfg: Any, run_dir: Path, run_kind: str, make_task: Callable[[], TrainTask], resume: bool, quiet: bool, title: str, command: str
) -> None:
    """Join the process group (under torchrun), seed, build the task, train, and say where things are."""
    env = distributed.setup(cfg.train.device)
    try:
        write_run_config(cfg, run_dir, run_kind, env.is_main)
        torch.manual_seed(cfg.train.seed)
        result = train(make_task(), cfg.train, cfg.data, run_dir, env, resume=resume, quiet=quiet, title=title)
    finally:
        distributed.teardown()
    if env.is_main:
        if result.interrupted:
            typer.echo(f"stopped at step {result.step}; checkpoint saved. Continue with: ldm {command} --resume {run_dir}")
        else:
            typer.echo(f"trained {result.step} steps; model in {result.model_dir}")
