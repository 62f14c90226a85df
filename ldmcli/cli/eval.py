"""`ldm eval`: one command, its flags pick the metrics (`--recon` now; sample metrics join later)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.evaluate import evaluate_recon
from ldmcli.autoencoder.lpips_loader import default_weights_path, load_lpips
from ldmcli.data.reader import eval_loader
from ldmcli.errors import UserError
from ldmcli.train import distributed


def _lpips(weights: Path | None):
    """LPIPS when its backbone file is given or in the torch cache; otherwise the figure is left out."""
    if weights is None and not default_weights_path("alex").is_file():
        return None
    return load_lpips("alex", weights)


def eval_command(
    shards: list[str] = typer.Argument(..., help="Image shards to evaluate on: paths, dirs, globs, {a..b} or pipe: URLs."),
    recon: bool = typer.Option(False, "--recon", help="Reconstruction fidelity of --ae, next to bicubic at the same latent size."),
    ae: Path = typer.Option(None, "--ae", help="Autoencoder model dir (from ldm train-ae or ldm convert)."),
    size: int = typer.Option(None, "--size", help="Resize the shorter side and centre-crop to this (default: images as stored)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    limit: int = typer.Option(0, "--limit", help="Stop after about this many images (0: all)."),
    tile: int = typer.Option(0, "--tile", help="Encode/decode in overlapping tiles of this many pixels (for large images)."),
    precision: str = typer.Option("bf16", "--precision", help="bf16 (autocast) or fp32."),
    lpips_weights: Path = typer.Option(None, "--lpips-weights", help="torchvision alexnet file for LPIPS (default: the torch cache; skipped when absent)."),
    json_path: Path = typer.Option(None, "--json", help="Write the figures as JSON here."),
    save: Path = typer.Option(None, "--save", help="Write NAME.orig.png / NAME.recon.png pairs into this dir."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    num_workers: int = typer.Option(0, "--num-workers", help="Data loader workers."),
) -> None:
    """Evaluate models on image shards; works under torchrun (each rank takes its share).

    Example: ldm eval data/photos-val --recon --ae runs/ae-kl-f4/model --json recon.json --save recon/
    """
    if not recon:
        raise UserError("pick a metric: --recon (reconstruction fidelity of an autoencoder)")
    if ae is None:
        raise UserError("--recon needs --ae MODEL_DIR")
    if precision not in ("bf16", "fp32"):
        raise UserError(f"--precision must be bf16 or fp32, got '{precision}'")
    if tile < 0 or limit < 0:
        raise UserError("--tile and --limit must not be negative")
    env = distributed.setup(device)
    try:
        model = load_autoencoder(ae, env.device)
        if tile and tile % model.factor:
            raise UserError(f"--tile must be a multiple of the autoencoder's factor {model.factor}")
        lpips = _lpips(lpips_weights)
        loader = eval_loader(shards, batch_size=batch_size, size=size, rank=env.rank, world_size=env.world_size, num_workers=num_workers)
        batches = _limited(loader, limit // env.world_size if limit else 0)
        console = Console(stderr=True)
        with Progress(TextColumn("recon"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=not env.is_main) as bar:
            task = bar.add_task("recon", total=limit or None)
            result = evaluate_recon(
                model, batches, env.device, lpips, precision, tile, save,
                reduce=lambda v: distributed.all_sum(env, v), on_batch=lambda n: bar.advance(task, n * env.world_size),
            )
    finally:
        distributed.teardown()
    if not env.is_main:
        return
    result["autoencoder"] = str(ae)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)


def _limited(loader, limit: int):
    seen = 0
    for batch in loader:
        yield batch
        seen += batch["image"].shape[0]
        if limit and seen >= limit:
            return


def _print(result: dict) -> None:
    table = Table(title=f"reconstruction, {result['images']} images, f={result['factor']}")
    table.add_column("metric")
    table.add_column("autoencoder", justify="right")
    table.add_column("bicubic", justify="right")
    for name in ("psnr", "ssim", "hf_ratio", "lpips", "rfid"):
        ours, base = result[name], result[f"bicubic_{name}"]
        table.add_row(name, "n/a" if ours is None else f"{ours:.4f}", "n/a" if base is None else f"{base:.4f}")
    Console().print(table)
    if result["skipped"]:
        Console(stderr=True).print(f"skipped {result['skipped']} corrupt samples")
