"""`ldm convert`: autoencoder weights from and to diffusers and CompVis layouts."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.config import KIND
from ldmcli.interop.autoencoder import export_autoencoder, import_autoencoder
from ldmcli.modeldir import save_model_dir


class Target(str, Enum):
    ldm = "ldm"
    diffusers = "diffusers"
    compvis = "compvis"


def convert(
    source: Path = typer.Argument(..., help="--to ldm: a diffusers AutoencoderKL/VQModel dir or a CompVis/SD .ckpt/.safetensors; otherwise an ldmcli model dir."),
    out: Path = typer.Option(..., "--out", "-o", help="ldm/diffusers: a dir to write; compvis: a .safetensors file."),
    to: Target = typer.Option(Target.ldm, "--to", help="ldm (import), diffusers or compvis (export)."),
) -> None:
    """Import an autoencoder (e.g. the Stable Diffusion VAE) into an ldmcli model dir, or export one.

    Example: ldm convert sd-vae-ft-mse/ --out models/sd-vae   (then: ldm encode data --ae models/sd-vae ...)
    """
    if to is Target.ldm:
        model = import_autoencoder(source)
        save_model_dir(out, KIND, model.config, model)
        cfg = model.config
        typer.echo(f"wrote {out}: {cfg.bottleneck.upper()}-f{cfg.factor}, {cfg.embed_dim} latent channels")
    else:
        model = load_autoencoder(source)
        path = export_autoencoder(model, out, to.value)
        typer.echo(f"wrote {path} ({to.value} layout)")
