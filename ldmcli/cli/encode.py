"""`ldm encode`: image shards -> latent shards + stats.json, with the autoencoder a model dir holds."""

from __future__ import annotations

from pathlib import Path

import typer

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.encode import clear_latent_shards, encode_shards
from ldmcli.autoencoder.latents import write_stats
from ldmcli.cli.data import progress_bar
from ldmcli.data.info import expected_samples
from ldmcli.data.reader import eval_loader
from ldmcli.data.shards import check_name
from ldmcli.errors import UserError
from ldmcli.precision import check as check_precision
from ldmcli.train import distributed


def encode(
    shards: list[str] = typer.Argument(..., help="Image shards: paths, dirs, globs, {a..b} or pipe: URLs."),
    ae: Path = typer.Option(..., "--ae", help="Autoencoder model dir (from ldm train-ae or ldm convert)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the latent shards NAME-000000.tar, ... and stats.json."),
    size: int = typer.Option(None, "--size", help="Resize the shorter side and centre-crop to this first (default: as stored)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per latent shard."),
    name: str = typer.Option("latents", "--name", help="Shard name prefix."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 or float32 latents on disk."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the device has it natively), bf16 (autocast) or fp32 encoder arithmetic."),
    tile: int = typer.Option(0, "--tile", help="Encode in overlapping tiles of this many pixels (large images)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    num_workers: int = typer.Option(2, "--num-workers", help="Data loader workers per rank."),
) -> None:
    """Encode images into latents for diffusion training; works under torchrun (each rank writes its own shards).

    Example: ldm encode data/photos --ae runs/ae-kl-f4/model --out data/photos-latents
    """
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype must be float16 or float32, got '{dtype}'")
    check_precision(precision, "--precision")
    check_name(name)
    env = distributed.setup(device)
    try:
        model = load_autoencoder(ae, env.device)
        if tile and (tile < 0 or tile % model.factor):
            raise UserError(f"--tile must be a positive multiple of the autoencoder's factor {model.factor}")
        loader = eval_loader(shards, batch_size=batch_size, size=size, rank=env.rank, world_size=env.world_size, num_workers=num_workers)
        if env.is_main:
            clear_latent_shards(out, name)
        distributed.barrier(env)
        shard_name = name if env.world_size == 1 else f"{name}-r{env.rank:03d}"
        with progress_bar(disable=not env.is_main) as bar:
            task = bar.add_task("encode", total=expected_samples(shards))
            stats = encode_shards(
                model, ae, loader, out, env, name=shard_name, shard_size=shard_size, dtype=dtype, precision=precision,
                tile=tile, on_batch=lambda n: bar.advance(task, n * env.world_size),
            )
        if env.is_main:
            write_stats(out, stats)
        distributed.barrier(env)
    finally:
        distributed.teardown()
    if env.is_main:
        skipped = f" ({stats['skipped']} corrupt samples skipped)" if stats["skipped"] else ""
        typer.echo(f"encoded {stats['samples']} images to {out}{skipped}; latent shape {stats['latent_shape']}, scale factor {stats['scale_factor']:.5f}")
