"""`ldm eval`: one command, its flags pick the metrics (`--recon`; `--fid/--kid/--isc/--prc` of samples;
`--prompts` of a text-to-image shapes model; `--layout` of a layout-to-image one)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.evaluate import evaluate_recon
from ldmcli.autoencoder.lpips_loader import default_weights_path, load_lpips
from ldmcli.cli.eval_common import write_json
from ldmcli.cli.eval_layout import run_layout
from ldmcli.cli.eval_sweep import parse_list, run_sweep
from ldmcli.cli.eval_text import run_clip_score, run_prompts
from ldmcli.data.shapes import parse_hold_out
from ldmcli.data.reader import eval_loader
from ldmcli.errors import UserError
from ldmcli.precision import check as check_precision
from ldmcli.metrics.domain import classifier_space
from ldmcli.metrics.evaluate import Source, evaluate_samples, inception_space
from ldmcli.metrics.quality import Wanted
from ldmcli.pipeline import Settings
from ldmcli.train import distributed


def _lpips(weights: Path | None):
    """LPIPS when its backbone file is given or in the torch cache; otherwise the figure is left out."""
    if weights is None and not default_weights_path("alex").is_file():
        return None
    return load_lpips("alex", weights)


def eval_command(
    shards: list[str] = typer.Argument(None, help="Image shards for --recon (or scenes for --layout): paths, dirs, globs, {a..b} or pipe: URLs."),
    recon: bool = typer.Option(False, "--recon", help="Reconstruction fidelity of --ae, next to bicubic at the same latent size and at as many numbers as the latent."),
    ae: Path = typer.Option(None, "--ae", help="Autoencoder model dir (from ldm train-ae or ldm convert)."),
    fid: bool = typer.Option(False, "--fid", help="Frechet Inception Distance of --samples against --ref."),
    kid: bool = typer.Option(False, "--kid", help="Kernel Inception Distance (needs reference images, not statistics)."),
    isc: bool = typer.Option(False, "--isc", help="Inception Score of --samples."),
    prc: bool = typer.Option(False, "--prc", help="Precision and recall (k = 3 nearest neighbours) against --ref."),
    prompts: bool = typer.Option(False, "--prompts", help="Prompt adherence of a text-to-image shapes --model (GenEval-style categories)."),
    layout: bool = typer.Option(False, "--layout", help="Layout adherence of a layout-to-image shapes --model: IoU of the detected objects with the boxes of held-out scenes."),
    scenes: int = typer.Option(64, "--scenes", help="--layout: scenes whose layouts are sampled (fresh shapes val scenes, or the first ones of the given shards)."),
    model: Path = typer.Option(None, "--model", help="Diffusion model dir for --prompts, --layout and --sweep."),
    sweep: bool = typer.Option(False, "--sweep", help="FID against NFE per sampler for --model (table, --json, --plot)."),
    samplers: str = typer.Option("ddim,dpmpp_2m", "--samplers", help="--sweep: comma-separated samplers."),
    sweep_steps: str = typer.Option("5,10,20,50", "--sweep-steps", help="--sweep: comma-separated step counts."),
    plot_path: Path = typer.Option(None, "--plot", help="--sweep: write the FID-against-NFE plot (PNG) here."),
    clip_score: bool = typer.Option(False, "--clip-score", help="CLIP score of --samples (PNGs from ldm sample) against their prompts."),
    clip_arch: str = typer.Option("ViT-H-14", "--clip-arch", help="--clip-score: open_clip architecture."),
    clip_weights: Path = typer.Option(None, "--clip-weights", help="--clip-score: the open_clip model's .safetensors file."),
    per_category: int = typer.Option(16, "--per-category", help="--prompts: prompts per category."),
    n: int = typer.Option(None, "--n", help="--prompts: images per prompt (default 4); --layout: images per layout (default 2); --sweep: images per cell (default 500)."),
    hold_out: str = typer.Option("", "--hold-out", help="--prompts: the colour-shape pairs held out of training (as given to ldm data build); half of each category's prompts name one."),
    sampler: str = typer.Option(None, "--sampler", help="--prompts, --layout: sampler (default: the model's sampling.sampler)."),
    steps: int = typer.Option(None, "--steps", help="--prompts, --layout: sampler steps (default: the model's sampling.steps)."),
    cfg: float = typer.Option(None, "--cfg", help="--prompts, --layout: guidance scale (default: the model's preview guidance)."),
    seed: int = typer.Option(0, "--seed", help="--prompts, --layout: seeds the prompt suite or the val scenes, and the images."),
    accuracy: bool = typer.Option(False, "--accuracy", help="Classifier accuracy on the class of each sample (and on --ref); needs --features classifier."),
    samples: str = typer.Option(None, "--samples", help="Generated images: a folder of PNGs (ldm sample) or shards."),
    ref: str = typer.Option(None, "--ref", help="Reference: image shards or folder, or an npz of statistics (FID only)."),
    inception_weights: Path = typer.Option(None, "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache)."),
    features: str = typer.Option("inception", "--features", help="Feature network: inception, or classifier (offline, with --classifier)."),
    classifier: Path = typer.Option(None, "--classifier", help="Classifier model dir from ldm train-classifier (domain FID/KID, --accuracy)."),
    dims: int = typer.Option(2048, "--dims", help="Inception feature layer for FID/KID/PR: 64, 192, 768 or 2048."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", help="Images per KID subset (capped at the smaller set)."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="Number of KID subsets."),
    isc_splits: int = typer.Option(10, "--isc-splits", help="Inception Score splits (mean and std over them)."),
    save_stats: Path = typer.Option(None, "--save-stats", help="Write the reference's mu/sigma here (pytorch-fid npz) for later --ref."),
    size: int = typer.Option(None, "--size", help="Resize the shorter side and centre-crop to this (default: images as stored)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    limit: int = typer.Option(0, "--limit", help="Stop after about this many images (0: all)."),
    tile: int = typer.Option(0, "--tile", help="Encode/decode in overlapping tiles of this many pixels (for large images)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where the device has it natively), bf16 (autocast) or fp32."),
    lpips_weights: Path = typer.Option(None, "--lpips-weights", help="torchvision alexnet file for LPIPS (default: the torch cache; skipped when absent)."),
    json_path: Path = typer.Option(None, "--json", help="Write the figures as JSON here."),
    save: Path = typer.Option(None, "--save", help="--recon: write NAME.orig.png / NAME.recon.png pairs here; --prompts, --layout: each judged image and grid.png."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    num_workers: int = typer.Option(0, "--num-workers", help="Data loader workers."),
) -> None:
    """Evaluate models on image shards; works under torchrun (each rank takes its share).

    Example: ldm eval data/photos-val --recon --ae runs/ae-kl-f4/model --json recon.json --save recon/
    Example: ldm eval --fid --kid --samples out/ --ref data/digits-val --save-stats digits-val.npz --json fid.json
    Example: ldm eval --prompts --model runs/ldm-shapes/model --hold-out "purple triangle" --json adherence.json --save adherence/

    Example: ldm eval --layout --model runs/ldm-layout/model --scenes 128 --json layout.json --save layout/

    Example: ldm eval --sweep --model runs/ldm-digits/model --samplers ddim,dpmpp_2m --sweep-steps 5,10,20,50 --ref data/digits-val --features classifier --classifier runs/clf/model --plot sweep.png

    Example: ldm eval --clip-score --samples out/ --clip-arch ViT-H-14 --clip-weights open_clip_model.safetensors

    Example: ldm eval --fid --accuracy --features classifier --classifier runs/clf-digits/model --samples out/ --ref data/digits-val
    """
    if sweep:
        if recon or prompts or layout or clip_score or fid or kid or isc or prc or accuracy:
            raise UserError("--sweep measures FID itself: run it without the other metric flags")
        if model is None:
            raise UserError("--sweep needs --model MODEL_DIR")
        space = partial(_feature_space, features, classifier, inception_weights, dims, False)
        run_sweep(model, parse_list(samplers, "--samplers"), parse_list(sweep_steps, "--sweep-steps", int), ref, space,
                  500 if n is None else n, seed, cfg, batch_size, device, json_path, plot_path)
        return
    if clip_score:
        if recon or prompts or layout or fid or kid or isc or prc or accuracy:
            raise UserError("--clip-score is a metric of its own: run it without the other metric flags")
        run_clip_score(samples, clip_arch, clip_weights, batch_size, device, json_path)
        return
    if layout:
        if recon or prompts or fid or kid or isc or prc or accuracy:
            raise UserError("--layout is a metric of its own: run it without the other metric flags")
        if model is None:
            raise UserError("--layout needs --model MODEL_DIR (a layout-to-image model from ldm train-diffusion)")
        settings = Settings(sampler=sampler, steps=steps, guidance=cfg, precision=precision)
        run_layout(model, shards, scenes, 2 if n is None else n, settings, seed, batch_size, device, save, json_path)
        return
    if prompts:
        if recon or fid or kid or isc or prc or accuracy:
            raise UserError("--prompts is a metric of its own: run it without --recon/--fid/--kid/--isc/--prc/--accuracy")
        if model is None:
            raise UserError("--prompts needs --model MODEL_DIR (a text-to-image model from ldm train-diffusion)")
        settings = Settings(sampler=sampler, steps=steps, guidance=cfg, precision=precision)
        run_prompts(model, per_category, 4 if n is None else n, parse_hold_out(hold_out), settings, seed, batch_size, device, save, json_path)
        return
    wanted = Wanted(fid=fid, kid=kid, isc=isc, prc=prc, accuracy=accuracy, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, isc_splits=isc_splits)
    if recon == (fid or kid or isc or prc or accuracy):
        raise UserError("pick one kind of metric: --recon (an autoencoder), or --fid/--kid/--isc/--prc/--accuracy (samples)")
    if limit < 0 or kid_subsets < 1 or isc_splits < 1:
        raise UserError("--limit must not be negative; --kid-subsets and --isc-splits must be at least 1")
    if not recon:
        space = partial(_feature_space, features, classifier, inception_weights, dims, accuracy)
        _eval_samples(samples, ref, wanted, space, Source(batch_size, size, limit, num_workers), save_stats, json_path, device)
        return
    if not shards:
        raise UserError("--recon needs image shards to evaluate on")
    if ae is None:
        raise UserError("--recon needs --ae MODEL_DIR")
    check_precision(precision, "--precision")
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
    write_json(json_path, result)
    _print(result)


def _feature_space(features: str, classifier: Path | None, weights: Path | None, dims: int, accuracy: bool, device):
    if features == "classifier":
        if classifier is None:
            raise UserError("--features classifier needs --classifier MODEL_DIR (from ldm train-classifier)")
        return classifier_space(classifier, device)
    if features != "inception":
        raise UserError(f"--features must be inception or classifier, got '{features}'")
    if accuracy:
        raise UserError("--accuracy needs --features classifier --classifier MODEL_DIR")
    return inception_space(weights, dims, device)


def _eval_samples(samples, ref, wanted: Wanted, make_space, source: Source, save_stats, json_path, device) -> None:
    if samples is None:
        raise UserError("sample metrics need --samples DIR_OR_SHARDS")
    env = distributed.setup(device)
    try:
        space = make_space(env.device)
        console = Console(stderr=True)
        with Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=not env.is_main) as bar:
            task = bar.add_task("features", total=None)
            result = evaluate_samples(samples, ref, space, wanted, env, source, save_stats, lambda n: bar.advance(task, n * env.world_size))
    finally:
        distributed.teardown()
    if not env.is_main:
        return
    result |= {"samples": samples, "ref": ref}
    write_json(json_path, result)
    table = Table(title=f"{result['images']} samples", caption=f"features: {result['features']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.items():
        if isinstance(value, float):
            table.add_row(name, f"{value:.6g}")
    Console().print(table)
    if result["skipped"] or result.get("ref_skipped"):
        Console(stderr=True).print(f"skipped corrupt samples: {result['skipped']} of the samples, {result.get('ref_skipped', 0)} of the reference")


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
    table.add_column(f"bicubic, as many numbers as {result['latent_channels']} channels", justify="right")
    for name in ("psnr", "ssim", "hf_ratio", "lpips", "rfid"):
        values = (result[name], result[f"bicubic_{name}"], result.get(f"bicubic_same_numbers_{name}"))
        table.add_row(name, *("n/a" if v is None else f"{v:.4f}" for v in values))
    Console().print(table)
    if result["skipped"]:
        Console(stderr=True).print(f"skipped {result['skipped']} corrupt samples")
