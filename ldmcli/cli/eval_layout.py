"""`ldm eval --layout`: layout adherence of a layout-to-image shapes model. It samples images for the boxes
of scenes the model never saw (fresh `shapes` val scenes, or the json of given shards), reads each image
with the learning-free shapes detector and compares the objects' boxes with the requested ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from ldmcli.cli.eval_common import sample_each, write_json
from ldmcli.data.decode import open_image
from ldmcli.data.reader import eval_loader
from ldmcli.data.shapes import SHAPES, shape_samples
from ldmcli.diffusion import model as M
from ldmcli.diffusion.layout import Box, Layout, boxes_of
from ldmcli.errors import UserError
from ldmcli.images import GRID_NAME, save_grid, to_uint8
from ldmcli.metrics.layout import match, summarise
from ldmcli.metrics.shapes_detector import detect
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.train.distributed import resolve_device

_ROWS = ("mean_iou", "iou_50", "shape_correct", "colour_correct", "count_correct")


def scenes(shards: list[str] | None, count: int, size: int, seed: int) -> list[tuple[np.ndarray, dict, str]]:
    """(H x W x 3 uint8 image, json, caption) of `count` scenes: read from shards, or drawn as
    `ldm data build shapes --split val --seed SEED` draws them, at `size` pixels."""
    if not shards:
        return [(np.asarray(open_image(s["png"])), s["json"], s["txt"]) for s in shape_samples(size, count, seed, "val")]
    found = []
    for batch in eval_loader(shards, batch_size=32, required=("image", "json")):
        found += zip(to_uint8(batch["image"]), batch["json"], batch["txt"])
        if len(found) >= count:
            break
    return found[:count]


def _outlined(image: np.ndarray, boxes: tuple[Box, ...], scale: int = 2) -> torch.Tensor:
    """The image enlarged `scale` times with the requested boxes drawn on it, in [-1, 1] for a grid."""
    h, w = image.shape[:2]
    big = Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    for b in boxes:
        x0, y0, x1, y1 = b.box
        draw.rectangle([x0 * w * scale, y0 * h * scale, x1 * w * scale - 1, y1 * h * scale - 1], outline=(0, 0, 0))
    return torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1).float() / 127.5 - 1


def run_layout(model_dir: Path, shards: list[str] | None, count: int, n: int, settings: Settings, seed: int, batch: int,
               device: str, save: Path | None, json_path: Path | None) -> dict:
    if count < 1 or n < 1 or batch < 1:
        raise UserError("--scenes, --n and --batch-size must be at least 1")
    dev = resolve_device(device)
    model = M.load(model_dir, dev)
    cfg = model.recipe.conditioner
    if cfg.kind != "layout":
        raise UserError(f"--layout needs a layout-to-image model; {model_dir} is {cfg.kind}-conditioned")
    missing = [s for s in SHAPES if s not in cfg.labels]
    if missing:
        raise UserError(f"--layout judges the built-in shapes; {model_dir} knows no label '{missing[0]}'")
    pipe = Pipeline(model, settings, dev)
    drawn = scenes(shards, count, settings.height, seed)
    if not drawn:
        raise UserError(f"no scene with an image and a json in {' '.join(shards or [])}")
    layouts, left_out, rendered = [], 0, []
    for image, meta, text in drawn:
        boxes, bad = boxes_of(meta, image.shape[1], cfg)
        layouts.append(Layout(boxes, text if cfg.caption else ""))
        left_out += bad
        found = detect(image)
        rendered.append((boxes, found, match(boxes, found, image.shape[1], image.shape[0])))

    judged, grid_images = [], []
    for chunk, out in sample_each(pipe, layouts, n, seed, batch, "layouts"):
        for (k, j), img in zip(chunk, to_uint8(out)):
            found = detect(img)
            judged.append((layouts[k].boxes, found, match(layouts[k].boxes, found, img.shape[1], img.shape[0])))
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(save / f"{k:04d}-{j}.png")
                grid_images.append(_outlined(img, layouts[k].boxes))
    result = summarise(judged)
    result |= {"model": str(model_dir), "scenes": len(layouts), "n": n, "source": " ".join(shards) if shards else f"shapes val, seed {seed}",
               "boxes_left_out": left_out, "sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance,
               "rendered": summarise(rendered),
               "layouts": [{"layout": json.loads(layout.to_json()), "caption": layout.caption,
                            "iou": [[r["iou"] for r in judged[k * n + j][2]] for j in range(n)]} for k, layout in enumerate(layouts)]}
    if save is not None:
        save_grid(torch.stack(grid_images), save / GRID_NAME, nrow=max(n, 8))
    write_json(json_path, result)
    _print(result)
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print(result: dict) -> None:
    table = Table(title=f"layout adherence, {result['images']} images of {result['scenes']} layouts ({result['boxes']} boxes)",
                  caption="rendered: the detector on the layouts' own scenes")
    for column in ("metric", "samples", "rendered"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in _ROWS:
        table.add_row(name, _fmt(result[name]), _fmt(result["rendered"][name]))
    Console().print(table)
    if result["boxes_left_out"]:
        Console(stderr=True).print(f"boxes left out (unknown label or colour, bad box, past max_boxes): {result['boxes_left_out']}")
