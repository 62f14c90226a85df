"""`ldm train-diffusion`: the UNet (and a text or class conditioner) on latent shards, on image shards
encoded on the fly through an autoencoder, or on pixels (the paper's LDM-1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import typer

from ldmcli.autoencoder.latents import STATS_FILE, check_stats, read_stats
from ldmcli.cli.common import DEVICE, OUT, QUIET, RECIPE, RESUME, SET, prepare_run, run_training
from ldmcli.data.reader import eval_loader, resolve_shards
from ldmcli.diffusion.config import KIND, RUN_KIND, DiffusionRecipe
from ldmcli.diffusion.first_stage import load_first_stage, measure_scale
from ldmcli.diffusion.image_cond import TASKS, training_inputs
from ldmcli.diffusion.model import resolve
from ldmcli.diffusion.task import DiffusionTask
from ldmcli.errors import UserError


def _latent_dir(shards: list[str]) -> Path | None:
    """The folder of local latent shards (stats.json beside them), or None for image shards."""
    first = Path(shards[0])
    return first.parent if first.is_file() and (first.parent / STATS_FILE).is_file() else None


def _latents_autoencoder(stats: dict, latent_dir: Path, ae: Path | None) -> str:
    """The autoencoder the latents belong to: --ae, else the path stats.json recorded; its id must match."""
    recorded = Path(stats["autoencoder"].get("path", ""))
    candidates = [ae] if ae is not None else [recorded, latent_dir / recorded]
    found = next((p for p in candidates if str(p) and (p / "config.json").is_file()), None)
    if found is None:
        raise UserError(f"the latents' autoencoder dir '{recorded}' (from {latent_dir / STATS_FILE}) is not there; name it with --ae")
    check_stats(stats, found)
    return str(found.resolve())


def _first_stage(cfg: DiffusionRecipe, shards: list[str], ae: Path | None):
    """(resolved recipe, first stage module, encode_images) for cached latents, --ae images, or pixels."""
    fs = cfg.first_stage
    if fs.latent_std <= 0:
        raise UserError(f"first_stage.latent_std must be positive, got {fs.latent_std}")
    latent_dir = _latent_dir(shards)
    if latent_dir is not None:
        if cfg.task.kind != "generate":
            raise UserError(f"task {cfg.task.kind} builds its inputs from images: give image shards (with --ae), not latents")
        stats = read_stats(latent_dir)
        fs.autoencoder = _latents_autoencoder(stats, latent_dir, ae or (Path(fs.autoencoder) if fs.autoencoder else None))
        fs.scale_factor = fs.scale_factor or float(stats["scale_factor"]) * fs.latent_std
        shape = stats.get("latent_shape")
        if not shape or shape[1] != shape[2]:
            raise UserError(f"the latents in {latent_dir} are not all one square shape ({shape}); encode them at one --size")
        return resolve(cfg, int(shape[0]), int(shape[1])), load_first_stage(fs.autoencoder), False
    if ae is not None:
        fs.autoencoder = str(Path(ae).resolve())
    model = load_first_stage(fs.autoencoder or "")
    if cfg.data.size % model.factor:
        raise UserError(f"data.size {cfg.data.size} is not a multiple of the autoencoder's factor {model.factor}")
    if not fs.autoencoder:
        if fs.latent_std != 1:
            raise UserError("first_stage.latent_std applies to latents; a pixel-space model takes first_stage.scale_factor")
        fs.scale_factor = fs.scale_factor or 1.0
    elif not fs.scale_factor:
        known = model.config.scaling_factor
        batches = eval_loader(shards, batch_size=32, size=cfg.data.size)
        measured = known or measure_scale((model.encode(b["image"]) for b in batches), "the latent scale factor")
        fs.scale_factor = measured * fs.latent_std
    if cfg.task.residual and not cfg.task.residual_scale:
        cfg.task.residual_scale = _residual_scale(cfg, shards, model)
    return resolve(cfg, model.latent_channels, cfg.data.size // model.factor), model, True


def _residual_scale(cfg: DiffusionRecipe, shards: list[str], model) -> float:
    """1 / std of what a residual super-resolution model denoises (task.residual), on the training data."""
    def encode(x):
        return model.encode(x).float() * cfg.first_stage.scale_factor

    batches = eval_loader(shards, batch_size=32, size=cfg.data.size)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    unscaled = dataclasses.replace(cfg.task, residual_scale=1.0)
    return measure_scale((training_inputs(unscaled, b["image"], encode, gen)[0] for b in batches), "the residual scale")


def train_diffusion(
    shards: list[str] = typer.Argument(None, help="Latent shards (stats.json beside them), or image shards with --ae or for pixel-space models."),
    recipe: Path = RECIPE,
    sets: list[str] = SET,
    out: Path = OUT,
    ae: Path = typer.Option(None, "--ae", help="Autoencoder model dir: encode image shards on the fly."),
    task: str = typer.Option(None, "--task", help="generate (default), sr (super-resolution: the UNet also sees the low-res image) or inpaint (it sees the mask and masked image); same as --set task.kind=..."),
    resume: Path = RESUME,
    device: str = DEVICE,
    quiet: bool = QUIET,
) -> None:
    """Train a latent diffusion model (UNet + conditioner) with the one training loop.

    Example: ldm train-diffusion data/digits-latents --recipe recipes/ldm-digits-class.toml --out runs/ldm-digits
    """
    if resume is not None and (ae is not None or task is not None):
        raise UserError("--resume takes the run dir only; its config.json names the autoencoder and the task")
    if task is not None:
        if task not in TASKS:
            raise UserError(f"unknown --task '{task}' (choose from {', '.join(TASKS)})")
        sets = [*sets, f"task.kind={task}"]
    cfg, run_dir = prepare_run(DiffusionRecipe, RUN_KIND, shards or [], recipe, sets, out, resume, device)
    shards_list = resolve_shards(cfg.data.shards)
    cfg, first_stage, encode = _first_stage(cfg, shards_list, ae)
    cfg.data.shards = shards_list
    run_training(cfg, run_dir, RUN_KIND, lambda: DiffusionTask(cfg, first_stage, encode), resume is not None, quiet, KIND, "train-diffusion")
