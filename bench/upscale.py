"""Latent super-resolution against bicubic upscaling on held-out photos: each 64 px crop is shrunk x4
with antialiased bicubic (the paper's degradation), then brought back by the SR model (the code path of
`ldm upscale`) and by bicubic upsampling; PSNR, SSIM and the high-frequency ratio (energy above Nyquist / 4
of the output over the original's) of both, and of the autoencoder's own reconstruction, the ceiling an
LDM-4 cannot pass. The issue's goal: HF ratio >= 0.8 with PSNR at most 2 dB under bicubic.

Prints `name: value` lines last (and --json); never asserts.
  python bench/upscale.py --model runs/sr-photos-x4/model --val data/photos-val --n 256 --save sr.png
  python bench/upscale.py --model runs/sr-photos-x4/model --val data/photos-val --sampler ddpm --steps 50 --input-guidance 2
  python bench/upscale.py --model runs/sr-photos-x4/model --val data/photos-val --sampler ddpm --steps 50 --back-projection 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ldmcli.data.reader import eval_loader
from ldmcli.diffusion import model as M
from ldmcli.diffusion.degrade import bicubic_down
from ldmcli.images import save_grid
from ldmcli.metrics.recon import ReconAccumulator
from ldmcli.pipeline import Pipeline, Settings
from report import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--val", required=True, help="held-out image shards (the SR model's training size)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's sampling.steps)")
    parser.add_argument("--sampler", help="default: the model's sampling.sampler")
    parser.add_argument("--eta", type=float, help="stochastic samplers' noise per step (default: the sampler's own)")
    parser.add_argument("--noise-level", type=int, default=0)
    parser.add_argument("--input-guidance", type=float, help="guidance on the low-resolution input (1: off; default: the model's)")
    parser.add_argument("--guidance-level", type=int, default=0, help="noise level input guidance pushes away from (0: the highest)")
    parser.add_argument("--guidance-from", type=float, help="input guidance only at t >= this fraction of T (default: the model's)")
    parser.add_argument("--back-projection", type=int, help="iterations of back-projection onto the input (0: none; default: the model's)")
    parser.add_argument("--save", type=Path, help="PNG grid: rows of bicubic, SR, original for the first 8 crops")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device("cpu")
    model = M.load(args.model, device)
    scale = model.recipe.task.scale
    size = model.recipe.first_stage.size * model.first_stage.factor
    settings = Settings(sampler=args.sampler, steps=args.steps, noise_level=args.noise_level, guidance=1.0, eta=args.eta,
                        input_guidance=args.input_guidance, guidance_level=args.guidance_level,
                        guidance_from=args.guidance_from, back_projection=args.back_projection)
    pipe = Pipeline(model, settings, device)
    figures = {name: ReconAccumulator(scale) for name in ("sr", "bicubic", "ae")}
    images, sr_time, shown = 0, 0.0, []
    for batch in eval_loader(args.val, batch_size=16, size=size):
        hr = batch["image"].float()
        low = bicubic_down(hr, scale)
        start = time.monotonic()
        sr = pipe([None], list(range(images, images + len(hr))), low=low)
        sr_time += time.monotonic() - start
        bicubic = F.interpolate(low, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        for name, out in (("sr", sr), ("bicubic", bicubic), ("ae", pipe.decode(pipe.encode(hr)))):
            figures[name].add(hr, out)
        if not shown:
            shown = [bicubic[:8], sr[:8], hr[:8]]
        images += len(hr)
        if images >= args.n:
            break
    if args.save:
        save_grid(torch.cat(shown), args.save, nrow=len(shown[0]))
    out = {"images": images, "size": size, "scale": scale, "sampler": settings.sampler, "steps": settings.steps}
    out |= {"eta": args.eta} if args.eta is not None else {}
    out |= {"input_guidance": settings.input_guidance, "back_projection": settings.back_projection}
    if settings.input_guidance != 1.0:
        out |= {"guidance_level": settings.guidance_level, "guidance_from": settings.guidance_from}
    for name, acc in figures.items():
        res = acc.result()
        out |= {f"{name}_psnr": res["psnr"], f"{name}_ssim": res["ssim"], f"{name}_hf_ratio": res["hf_ratio"]}
    out |= {"psnr_gap_to_bicubic_db": out["bicubic_psnr"] - out["sr_psnr"], "sr_img_per_s": images / sr_time}
    report(out, args.json)


if __name__ == "__main__":
    main()
