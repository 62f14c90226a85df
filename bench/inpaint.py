"""Latent inpainting keeps what it was told to keep: on held-out shapes scenes, the error of the kept
region of `ldm sample --init --mask` against the original, next to the autoencoder's own reconstruction
error on that region (the floor: the kept latents decode to the reconstruction), and next to a free
sample (what nothing kept would give).

Needs a trained text-to-image shapes model dir (`ldm demo` makes one: runs/demo/ldm/model) and held-out
shards; the prompt of each scene is its own caption. The mask is the left half of each image.
Prints `name: value` lines last (and --json); never asserts.
  python bench/inpaint.py --model runs/demo/ldm/model --val runs/demo/data/shapes-val --n 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ldmcli.data.reader import eval_loader
from ldmcli.diffusion import model as M
from ldmcli.pipeline import Pipeline, Settings
from report import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--val", required=True, help="held-out image shards with captions")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

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
    report({"images": images, "kept_region_mae": kept, "ae_recon_mae": floor, "free_sample_mae": free,
            "kept_over_recon": kept / floor, "kept_over_free": kept / free}, args.json)


if __name__ == "__main__":
    main()
