"""`ldm upscale`: super-resolution with a model trained by `ldm train-diffusion --task sr`, any image size,
denoised in overlapping latent tiles so large images fit in memory and show no seams."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import typer
from PIL import Image, PngImagePlugin
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ldmcli.cli.sample import ETA, SAMPLER, STEPS, load_image, to_tensor
from ldmcli.data.folder import IMAGE_SUFFIXES
from ldmcli.diffusion import model as M
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.errors import UserError
from ldmcli.images import to_uint8
from ldmcli.modeldir import weights_id
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.train.distributed import resolve_device


def _inputs(paths: list[Path]) -> list[Path]:
    """Image files, folders expanded to their images (sorted); one output name per input."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"no such image or folder: {p}")
    if not found:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    stems = [p.stem for p in found]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        raise UserError(f"two inputs would both be written as {dup}.png: upscale them into different --out folders")
    return found


def _canvas(low: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    """Pad the low-resolution image (reflecting, replicating when tiny) so scale x its size is a multiple
    of `multiple` output pixels; the result is cropped back afterwards."""
    h, w = low.shape[-2:]
    step = multiple // math.gcd(multiple, scale)  # low-res pixels per allowed output size step
    ph, pw = -h % step, -w % step
    if not (ph or pw):
        return low
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(low, (0, pw, 0, ph), mode=mode)


def upscale(
    inputs: list[Path] = typer.Argument(..., help="Images, or folders of images, to upscale."),
    model_dir: Path = typer.Option(..., "--model", "-m", help="Super-resolution model dir (ldm train-diffusion --task sr)."),
    scale: int = typer.Option(0, "--scale", help="Upscaling factor; must be the one the model was trained for (default: that one)."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Caption, for a text-conditional super-resolution model."),
    sampler: str = SAMPLER,
    steps: int = STEPS,
    eta: float = ETA,
    noise_level: int = typer.Option(0, "--noise-level", help="Augmentation level the model is told its input has (models trained with task.noise_levels)."),
    input_guidance: float = typer.Option(None, "--input-guidance", help="Guidance on the low-resolution input: above 1 draws detail more boldly "
                                         "(models trained with task.noise_levels; 1: off, one UNet pass per step instead of two; "
                                         "default: the model's task.input_guidance)."),
    guidance_level: int = typer.Option(0, "--guidance-level", help="The noise level input guidance pushes away from (0: the model's highest)."),
    guidance_from: float = typer.Option(None, "--guidance-from", help="Input guidance only at timesteps above this fraction of the schedule, "
                                        "the noisier part where structure is drawn (0: every step; default: the model's task.guidance_from)."),
    back_projection: int = typer.Option(None, "--back-projection", help="Iterations of back-projection onto the input after decoding, so the "
                                        "output shrinks back to it (0: none; default: the model's task.back_projection, none with --noise-level)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the starting noise (the same for every input)."),
    tile: int = typer.Option(64, "--tile", help="Denoise and decode in overlapping tiles of this many latent pixels when larger (0: never)."),
    out: Path = typer.Option(Path("upscaled"), "--out", "-o", help="Folder for the PNGs (NAME.png for each input)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where the device has it natively), bf16 (autocast for the networks) or fp32."),
) -> None:
    """Upscale images with a latent super-resolution model, tiled so any size fits.

    Example: ldm upscale photo.png --model runs/sr-photos-x4/model --out upscaled
    """
    files = _inputs(inputs)
    dev = resolve_device(device)
    model = M.load(model_dir, dev)
    task = model.recipe.task
    if task.kind != "sr":
        raise UserError(f"{model_dir} was trained for task '{task.kind}', not super-resolution (ldm train-diffusion --task sr)")
    if scale and scale != task.scale:
        raise UserError(f"{model_dir} was trained for x{task.scale}, not x{scale}")
    if model.recipe.conditioner.kind not in ("none", "text", "clip"):
        raise UserError(f"ldm upscale takes unconditional or text-conditional models, not {model.recipe.conditioner.kind}")
    multiple = model.first_stage.factor * model.unet.size_multiple
    lows = []
    for f in files:
        low = to_tensor(load_image(f, "input"))
        lows.append((f, low, _canvas(low, task.scale, multiple)))

    def pipeline(canvas: torch.Tensor) -> Pipeline:
        h, w = (v * task.scale for v in canvas.shape[-2:])
        settings = Settings(sampler=sampler, steps=steps, height=h, width=w, tile=tile, precision=dtype, noise_level=noise_level,
                            guidance=None if prompt else 1.0, eta=eta, input_guidance=input_guidance, guidance_level=guidance_level,
                            guidance_from=guidance_from, back_projection=back_projection)
        return Pipeline(model, settings, dev)

    pipes = [pipeline(c) for _, _, c in lows]
    conds = pipes[0].conditions([prompt] if prompt else [], [])
    chosen = pipes[0].s
    evals = chosen.steps + SAMPLERS[chosen.sampler].extra_evals(chosen.steps)
    total = sum(p.tiles() * evals for p in pipes)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    columns = (TextColumn("upscale"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles  {task.fields[images]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    start = time.monotonic()
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        job = bar.add_task("upscale", total=total, images="")
        for k, ((path, low, canvas), pipe) in enumerate(zip(lows, pipes)):
            image = pipe(conds, [seed], low=canvas, on_tile=lambda: bar.advance(job))
            h, w = (v * task.scale for v in low.shape[-2:])
            info = PngImagePlugin.PngInfo()
            meta = {"source": str(path), "scale": str(task.scale), "sampler": chosen.sampler, "steps": str(chosen.steps), "seed": str(seed),
                    "noise_level": str(noise_level), "model": str(model_dir), "model_id": weights_id(model_dir)}
            meta |= {"eta": f"{eta:g}"} if eta is not None else {}
            if pipe.s.input_guidance != 1.0:
                meta |= {"input_guidance": f"{pipe.s.input_guidance:g}", "guidance_level": str(pipe.s.guidance_level),
                         "guidance_from": f"{pipe.s.guidance_from:g}"}
            meta |= {"back_projection": str(pipe.s.back_projection)} if pipe.s.back_projection else {}
            for key, value in (meta | ({"prompt": prompt} if prompt else {})).items():
                info.add_itxt(key, value)
            Image.fromarray(to_uint8(image[..., :h, :w])[0]).save(out / f"{path.stem}.png", pnginfo=info)
            bar.update(job, images=f"{k + 1}/{len(files)} images")
    typer.echo(f"upscaled {len(files)} images x{task.scale} into {out} ({time.monotonic() - start:.1f} s, {chosen.sampler}, {chosen.steps} steps)")
