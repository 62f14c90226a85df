"""Text-to-image evaluations of `ldm eval`: `--prompts` samples a shapes model on a fixed prompt suite and
judges each image; `--clip-score` scores sampled PNGs against their own prompts with an OpenCLIP model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ldmcli.cli.eval_common import sample_each, write_json
from ldmcli.data.shapes import draw_scene
from ldmcli.diffusion import model as M
from ldmcli.errors import UserError
from ldmcli.images import GRID_NAME, save_grid, to_uint8
from ldmcli.metrics.clip_score import clip_score, prompted_images
from ldmcli.metrics.prompts import CATEGORIES, judge, prompt_records, prompt_suite, summarise
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.train.distributed import resolve_device

_BACKGROUND = (240, 238, 232)


def rendered_accuracy(prompts, size: int) -> dict:
    """The judge on the prompts' own scenes drawn by the data generator: what a perfect model scores."""
    verdicts = [[judge(p, np.asarray(draw_scene(p.objects, _BACKGROUND, size)))] for p in prompts]
    return summarise(prompts, verdicts)


def run_prompts(model_dir: Path, per_category: int, n: int, hold_out: list[tuple[str, str]], settings: Settings, seed: int,
                batch: int, device: str, save: Path | None, json_path: Path | None) -> dict:
    if per_category < 1 or n < 1 or batch < 1:
        raise UserError("--per-category, --n and --batch-size must be at least 1")
    prompts = prompt_suite(per_category, hold_out, seed)
    dev = resolve_device(device)
    model = M.load(model_dir, dev)
    if model.recipe.conditioner.kind not in ("text", "clip"):
        raise UserError(f"--prompts needs a text-to-image model; {model_dir} is {model.recipe.conditioner.kind}-conditioned")
    pipe = Pipeline(model, settings, dev)
    verdicts: list[list[bool]] = [[] for _ in prompts]
    images = []
    for chunk, out in sample_each(pipe, [p.text for p in prompts], n, seed, batch, "prompts"):
        for (k, j), img in zip(chunk, to_uint8(out)):
            verdicts[k].append(judge(prompts[k], img))
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(save / f"{prompts[k].category}-{k:03d}-{j}.png")
        images.append(out.cpu())
    result = summarise(prompts, verdicts)
    result |= {"model": str(model_dir), "images": len(prompts) * n, "per_category": per_category, "n": n,
               "hold_out": [" ".join(p) for p in hold_out], "sampler": settings.sampler, "steps": settings.steps,
               "guidance": settings.guidance, "rendered": rendered_accuracy(prompts, settings.height),
               "prompts": prompt_records(prompts, verdicts)}
    if save is not None:
        save_grid(torch.cat(images), save / GRID_NAME, nrow=n * 4)
    write_json(json_path, result)
    _print(result)
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print(result: dict) -> None:
    table = Table(title=f"prompt adherence, {result['images']} images", caption="rendered: the judge on the prompts' own scenes")
    for column in ("category", "all", "seen", "held-out", "rendered"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for category in CATEGORIES:
        row = result["categories"][category]
        table.add_row(category, _fmt(row["all"]), _fmt(row["seen"]), _fmt(row["held_out"]), _fmt(result["rendered"]["categories"][category]["all"]))
    table.add_row("overall", _fmt(result["overall"]), "", "", _fmt(result["rendered"]["overall"]))
    Console().print(table)


def run_clip_score(samples: str | None, arch: str, weights: Path | None, batch: int, device: str, json_path: Path | None) -> dict:
    if samples is None:
        raise UserError("--clip-score needs --samples DIR (PNGs from ldm sample, which carry their prompts)")
    if weights is None:
        raise UserError("--clip-score needs --clip-weights PATH (the open_clip model's .safetensors; nothing is downloaded)")
    items = prompted_images(Path(samples))
    console = Console(stderr=True)
    with Progress(TextColumn("clip score"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("clip", total=len(items))
        result = clip_score(arch, weights, items, resolve_device(device), batch, lambda k: bar.advance(task, k))
    result["samples"] = samples
    write_json(json_path, result)
    Console().print(f"CLIP score ({arch}) of {result['images']} images: {result['clip_score']:.3f} (std {result['clip_score_std']:.3f})")
    return result
