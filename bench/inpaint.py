"""Inpainting keeps what it was told to keep, and fills the rest.

Training-free (`--model`, a text-to-image shapes model, e.g. `ldm demo`'s runs/demo/ldm/model): on
held-out scenes, the error of the kept region of `ldm sample --init --mask` (mask: the left half)
against the original, next to the autoencoder's own reconstruction error there (the floor) and a free
sample (nothing kept); the prompt of each scene is its caption.

Trained (`--inpaint-model`, from `ldm train-diffusion --task inpaint`, e.g. recipes/inpaint-shapes.toml):
on held-out scenes with seeded random training-style masks (boxes, strokes, irregular regions), the PSNR
of the masked regions (pooled over all images) against the original, next to filling it with the kept region's median colour (the
baseline: shapes scenes are mostly background), and the share of pixels beyond the pasted edge's feather
that come out exactly as given.

Prints `name: value` lines last (and --json); never asserts.
  python bench/inpaint.py --model runs/demo/ldm/model --val runs/demo/data/shapes-val --n 64
  python bench/inpaint.py --inpaint-model runs/inpaint-shapes/model --val data/shapes-val --n 128 --save inpaint.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldmcli.data.reader import eval_loader
from ldmcli.diffusion import model as M
from ldmcli.diffusion.masks import random_masks
from ldmcli.images import save_grid
from ldmcli.metrics.recon import quantize
from ldmcli.pipeline import Pipeline, Settings
from report import report

FEATHER_REACH = 4  # pixels beyond the mask that paste_known may blend (2 x its feather)


def training_free(args) -> dict:
    device = torch.device("cpu")
    model = M.load(args.model, device)
    pipe = Pipeline(model, Settings(sampler=args.sampler, steps=args.steps), device)
    kept_err, recon_err, free_err, images = [], [], [], 0
    for batch in eval_loader(args.val, batch_size=16):
        x = batch["image"].float()
        w = x.shape[-1]
        mask = torch.zeros(1, 1, *x.shape[-2:], dtype=torch.bool)
        mask[..., : w // 2] = True
        keep = np.s_[..., w // 2:]
        captions = list(batch["txt"])
        seeds = list(range(images, images + len(x)))
        recon = pipe.decode(pipe.encode(x))
        inpainted = torch.cat([pipe(captions[i:i + 1], seeds[i:i + 1], x[i:i + 1], mask) for i in range(len(x))])
        free = pipe(captions, seeds)
        for out, sink in ((inpainted, kept_err), (recon, recon_err), (free, free_err)):
            sink.append(((out - x)[keep].abs().mean(dim=(1, 2, 3)) * 127.5).numpy())
        images += len(x)
        if images >= args.n:
            break
    kept, floor, free = (float(np.concatenate(e).mean()) for e in (kept_err, recon_err, free_err))
    return {"images": images, "kept_region_mae": kept, "ae_recon_mae": floor, "free_sample_mae": free,
            "kept_over_recon": kept / floor, "kept_over_free": kept / free}


def masked_sq_err(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum of squared 8-bit errors, number of values) over the masked pixels of one image."""
    err = (quantize(a) - quantize(b)).pow(2)[:, mask[0]]
    return float(err.sum()), err.numel()


def psnr_of(sq: list[tuple[float, int]]) -> float:
    """PSNR (dB) of the pooled error: a mean of per-image PSNRs would be ruled by masks over flat background."""
    mse = sum(e for e, _ in sq) / max(sum(n for _, n in sq), 1)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def trained(args) -> dict:
    device = torch.device("cpu")
    model = M.load(args.inpaint_model, device)
    size = model.recipe.first_stage.size * model.first_stage.factor
    gen = torch.Generator().manual_seed(0)
    psnr_model, psnr_fill, exact, shown, images = [], [], [], [], 0
    for batch in eval_loader(args.val, batch_size=16, size=size):
        for x in batch["image"].float():
            mask = random_masks(1, size, gen)
            while not 0.02 < float(mask.mean()) < 0.98:  # nothing or everything masked says nothing here
                mask = random_masks(1, size, gen)
            pipe = Pipeline(model, Settings(sampler=args.sampler, steps=args.steps, strength=1.0), device)
            out = pipe([None], [images], x[None], mask)[0]
            region = mask[0].bool()
            fill = torch.where(region, x.flatten(1)[:, ~region.flatten()].median(dim=1).values[:, None, None], x)
            psnr_model.append(masked_sq_err(out, x, region))
            psnr_fill.append(masked_sq_err(fill, x, region))
            reach = F.max_pool2d(mask, 2 * FEATHER_REACH + 1, 1, FEATHER_REACH)[0, 0].bool()
            if not reach.all():
                exact.append(float((quantize(out) == quantize(x))[:, ~reach].float().mean()))
            if len(shown) < 8:
                shown.append((torch.where(region, torch.zeros_like(x), x), out, x))
            images += 1
        if images >= args.n:
            break
    if args.save:
        save_grid(torch.stack([row[k] for k in range(3) for row in shown]), args.save, nrow=len(shown))
    model_psnr, fill_psnr = psnr_of(psnr_model), psnr_of(psnr_fill)
    return {"images": images, "masked_psnr": model_psnr, "median_fill_masked_psnr": fill_psnr,
            "masked_psnr_gain_db": model_psnr - fill_psnr, "kept_pixels_exact": float(np.mean(exact))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a text-to-image model: training-free inpainting")
    parser.add_argument("--inpaint-model", type=Path, help="a model trained with --task inpaint")
    parser.add_argument("--val", required=True, help="held-out image shards (with captions for --model)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--save", type=Path, help="--inpaint-model: PNG rows of masked input, result, original")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if (args.model is None) == (args.inpaint_model is None):
        parser.error("give one of --model or --inpaint-model")
    report(training_free(args) if args.model else trained(args), args.json)


if __name__ == "__main__":
    main()
