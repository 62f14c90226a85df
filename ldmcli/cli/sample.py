"""`ldm sample`: images from a trained diffusion model dir, one PNG each with its settings in text chunks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image, PngImagePlugin
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ldmcli.modeldir import weights_id
from ldmcli.data.decode import CorruptSample, open_image
from ldmcli.diffusion import model as M
from ldmcli.diffusion.layout import Layout, read_layout
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.errors import UserError
from ldmcli.images import GRID_NAME, save_grid, to_uint8
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.train.distributed import resolve_device


def _read_prompts(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --prompts file {path}: {err}") from None
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise UserError(f"--prompts file {path} has no prompts (one per line)")
    return prompts


def load_image(path: Path, what: str) -> Image.Image:
    try:
        im = open_image(Path(path).read_bytes())
    except (OSError, CorruptSample) as err:
        raise UserError(f"cannot read {what} image {path}: {err}") from None
    return im


def _load_mask(path: Path, size: tuple[int, int], init_size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) bool, True = generate. One channel (or grey RGB), the init image's size, and black and
    white: a photo or a soft matte given by mistake would otherwise inpaint a surprise region."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") else "RGB"))
    except OSError as err:
        raise UserError(f"cannot read --mask image {path}: {err}") from None
    rgb = arr[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise UserError(f"--mask {path} is not single-channel: give a greyscale image (white = generate, black = keep)")
    if (arr.shape[1], arr.shape[0]) != init_size:
        raise UserError(f"--mask {path} is {arr.shape[1]}x{arr.shape[0]} but --init is {init_size[0]}x{init_size[1]}")
    grey = float(((rgb[..., 0] > 32) & (rgb[..., 0] < 223)).mean())
    if grey > 0.05:
        raise UserError(f"--mask {path} is not a 0/1 mask ({grey:.0%} of its pixels are grey): white = generate, black = keep")
    binary = Image.fromarray(np.where(rgb[..., 0] > 127, 255, 0).astype(np.uint8))
    if binary.size != size:
        binary = binary.resize(size, Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(binary) > 0)[None, None]


def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def _condition_chunks(c) -> dict:
    """The PNG text chunks that say what an image was asked for."""
    if c is None:
        return {}
    if isinstance(c, Layout):
        return {"layout": c.to_json()} | ({"prompt": c.caption} if c.caption else {})
    return {"class": str(c)} if isinstance(c, int) else {"prompt": c}


SAMPLER = typer.Option(None, "--sampler", help=f"One of {', '.join(SAMPLERS)} (default: the model's sampling.sampler, dpmpp_2m unless its recipe says otherwise).")
STEPS = typer.Option(None, "--steps", help="Sampler steps; heun costs 2 model calls a step, plms 1 extra (default: the model's sampling.steps, 25 unless its recipe says otherwise).")
ETA = typer.Option(None, "--eta", help="Fresh noise per step, 0 (deterministic) to 1 (ancestral), for ddim (default 0), euler_a and dpmpp_2m_sde (default 1).")


def sample(
    model_dir: Path = typer.Option(..., "--model", "-m", help="Diffusion model dir (from ldm train-diffusion)."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="Text prompt (repeatable)."),
    prompts_file: Path = typer.Option(None, "--prompts", help="File with one prompt per line."),
    classes: list[int] = typer.Option([], "--class", "-c", help="Class index (repeatable; default: every class)."),
    layouts: list[Path] = typer.Option([], "--layout", help='Layout JSON file (repeatable): a list of {"label", "colour" (optional), "box": [x0, y0, x1, y1] in 0..1}.'),
    n: int = typer.Option(4, "--n", help="Images per prompt, class or layout (in all, for an unconditional model)."),
    batch: int = typer.Option(8, "--batch", help="Images sampled together."),
    sampler: str = SAMPLER,
    steps: int = STEPS,
    spacing: str = typer.Option("linspace", "--spacing", help="Timesteps: linspace (T-1 down to 0, even), trailing (even from T-1; last step at T/steps - 1) or leading (even from 0; never reaches T-1)."),
    karras: bool = typer.Option(False, "--karras", help="Karras sigmas (sigma-based samplers)."),
    eta: float = ETA,
    cfg: float = typer.Option(None, "--cfg", help="Classifier-free guidance scale (default: the model's preview guidance)."),
    rescale: float = typer.Option(0.0, "--rescale", help="Guidance rescale phi in [0, 1] (Lin et al. 2023)."),
    negative: str = typer.Option("", "--negative", help="Negative prompt (text models): replaces the empty prompt in guidance."),
    seed: int = typer.Option(0, "--seed", help="Image k uses seed + k."),
    height: int = typer.Option(0, "--height", help="Pixels (default: the training size); any multiple of the latent factor x UNet depth."),
    width: int = typer.Option(0, "--width", help="Pixels (default: the training size)."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Folder for the PNGs."),
    grid: bool = typer.Option(False, "--grid", help="Also write grid.png with every image."),
    init: Path = typer.Option(None, "--init", help="Start from this image (img2img, SDEdit)."),
    strength: float = typer.Option(None, "--strength", help="With --init: share of the steps re-run (default 0.75; 1 with --mask)."),
    mask: Path = typer.Option(None, "--mask", help="With --init: white = generate, black = keep (inpainting)."),
    tile: int = typer.Option(64, "--tile", help="Decode in overlapping tiles of this many latent pixels when larger (0: never)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where the device has it natively), bf16 (autocast for the networks; sampler arithmetic stays fp32) or fp32."),
    compile_unet: bool = typer.Option(False, "--compile", help="torch.compile the UNet with frozen weights: faster steps after a one-off compile of minutes on a CPU (cached on disk); for long jobs."),
) -> None:
    """Sample images from a diffusion model: text, class, layout or unconditional; img2img and inpainting.

    Example: ldm sample --model runs/ldm-digits/model --class 3 --class 7 --n 8 --grid --out samples/digits

    Example: ldm sample --model runs/ldm-layout/model --layout layout.json --n 8 --grid --out samples/layout
    """
    if n < 1 or batch < 1:
        raise UserError("--n and --batch must be at least 1")
    if (strength is not None or mask is not None) and init is None:
        raise UserError("--strength and --mask need --init IMAGE")
    dev = resolve_device(device)
    model = M.load(model_dir, dev)
    settings = Settings(sampler=sampler, steps=steps, spacing=spacing, karras=karras, guidance=cfg, rescale=rescale, negative=negative,
                        height=height, width=width, strength=strength if strength is not None else (1.0 if mask else 0.75),
                        tile=tile, precision=dtype, compile=compile_unet, eta=eta)
    init_im = load_image(init, "--init") if init is not None else None
    if init_im is not None and not (height or width):  # the init image's size, rounded down as diffusers does
        m = model.first_stage.factor * model.unet.size_multiple
        settings.width, settings.height = (max(m, v - v % m) for v in init_im.size)
    pipe = Pipeline(model, settings, dev)
    conds = pipe.conditions(prompt + _read_prompts(prompts_file), classes, [read_layout(p, model.recipe.conditioner) for p in layouts])
    size = (settings.width, settings.height)
    init_t = to_tensor(init_im if init_im.size == size else init_im.resize(size, Image.Resampling.LANCZOS)) if init is not None else None
    mask_t = _load_mask(mask, size, init_im.size) if mask is not None else None
    run_steps = len(pipe.strength_steps() if init is not None else pipe.timesteps)

    jobs = [(c, seed + k) for k, c in enumerate(c for c in conds for _ in range(n))]
    meta = {"sampler": settings.sampler, "steps": str(settings.steps), "spacing": spacing, "guidance": f"{settings.guidance:g}",
            "model": str(model_dir), "model_id": weights_id(model_dir), "size": f"{settings.width}x{settings.height}"}
    meta |= {"karras": "true"} if karras else {}
    meta |= {"eta": f"{eta:g}"} if eta is not None else {}
    meta |= {"rescale": f"{rescale:g}"} if rescale else {}
    meta |= {"negative": negative} if negative else {}
    meta |= {"init": str(init), "strength": f"{settings.strength:g}"} if init is not None else {}
    meta |= {"mask": str(mask)} if mask is not None else {}
    out.mkdir(parents=True, exist_ok=True)

    batches = [jobs[i:i + batch] for i in range(0, len(jobs), batch)]
    images, done, start = [], 0, time.monotonic()
    console = Console(stderr=True)
    if compile_unet:
        console.print("compiling the UNet on the first batch (torch.compile: minutes the first time, cached afterwards)")
    columns = (TextColumn("sample"), BarColumn(), MofNCompleteColumn(), TextColumn("steps  {task.fields[images]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("sample", total=run_steps * len(batches), images="")
        for chunk in batches:
            imgs = pipe([c for c, _ in chunk], [s for _, s in chunk], init_t, mask_t, on_step=lambda i: bar.advance(task))
            for (c, s), img in zip(chunk, to_uint8(imgs)):
                info = PngImagePlugin.PngInfo()
                cond = _condition_chunks(c)
                for key, value in (cond | {"seed": str(s)} | meta).items():
                    info.add_itxt(key, value)
                Image.fromarray(img).save(out / f"{s - seed:05d}.png", pnginfo=info)
            done += len(chunk)
            if grid:
                images.append(imgs.cpu())
            bar.update(task, images=f"{done}/{len(jobs)} images  {done / (time.monotonic() - start):.2f} img/s")
    if grid:
        save_grid(torch.cat(images), out / GRID_NAME, nrow=n if len(conds) > 1 else None)
    rate = len(jobs) / (time.monotonic() - start)
    typer.echo(f"wrote {len(jobs)} images to {out} ({rate:.2f} img/s, {settings.sampler}, {run_steps} steps)")
