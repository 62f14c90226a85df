"""The paper's LDM-f against LDM-1 on this machine: how much cheaper diffusion becomes in a latent space.

For f = 1 (pixels), 2, 4, 8 at 64x64 images, one UNet of the same widths (model_channels, multipliers,
blocks, attention at 1/4 of its input) runs on a 3 x 64/f x 64/f input: training img/s (forward +
backward + fused AdamW, batch 32, on cached latents as `ldm encode` prepares them), the
first stage's encode img/s (paid once per image by `ldm encode`, or every step when encoding on the fly),
and sampling img/s (25 DPM-Solver++ steps then decoding). Autoencoders are the KL ones of ldmcli with
64 base channels and one block per level (ae-kl-f4-photos' widths); weights are random, as speed does
not depend on them. The ratios are against f = 1 measured in the same run; `--plot` draws them.
Everything runs in `--precision`: by default bf16 autocast where bf16 is native, fp32 elsewhere.

Quality at equal wall-clock training time comes from trained models, not from this script: see the
README's digits pair (ldm-digits-class against dm-pixel-digits) and its commands.

Prints `name: value` lines last (and --json); never asserts on time.
  OMP_NUM_THREADS=2 python bench/latent_vs_pixel.py --plot latent_vs_pixel.png --json latent_vs_pixel.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ldmcli import allocator
from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.diffusion.samplers import sample_dpmpp_2m, spaced_timesteps
from ldmcli.diffusion.schedule import ScheduleConfig, alphas_cumprod
from ldmcli.diffusion.unet import UNet, UNetConfig
from ldmcli.precision import CHOICES, autocast as precision_autocast, resolve
from report import report

FACTORS = (1, 2, 4, 8)
SIZE = 64


def first_stage(f: int) -> Autoencoder | None:
    if f == 1:
        return None
    mult = [1, 2, 4, 4][: f.bit_length()]
    return Autoencoder(AutoencoderConfig(channels=64, channel_mult=mult, num_res_blocks=1, z_channels=3, embed_dim=3)).eval()


def unet() -> UNet:
    return UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1,
                           attention_levels=[4], attention="plain", num_heads=4))


def best_rate(fn, images: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return images / best


def measure(f: int, batch: int, steps: int, repeats: int, precision: str) -> dict:
    torch.manual_seed(0)
    ae, net = first_stage(f), unet()
    side = SIZE // f
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)  # as the training loop's
    abar = alphas_cumprod(ScheduleConfig())
    z0 = torch.randn(batch, 3, side, side)
    autocast = precision_autocast(torch.device("cpu"), precision)

    def train_step() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(z0)
        a = abar[t].float().view(-1, 1, 1, 1)
        with autocast:
            loss = (net(a.sqrt() * z0 + (1 - a).sqrt() * noise, t).float() - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample() -> None:
        net.eval()
        with torch.no_grad(), autocast:
            z = sample_dpmpp_2m(lambda x, t: net(x.float(), t).float(), torch.randn(8, 3, side, side), spaced_timesteps(1000, steps, "linspace"), abar, "eps")
            if ae is not None:
                ae.decode(z.float())
        net.train()

    def encode() -> None:
        with torch.no_grad(), autocast:
            ae.encode(torch.randn(batch, 3, SIZE, SIZE))

    return {"train": best_rate(lambda: [train_step() for _ in range(3)], 3 * batch, repeats),
            "sample": best_rate(sample, 8, repeats),
            "encode": best_rate(encode, batch, repeats) if ae is not None else float("inf")}


def plot(rows: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("train", "training"), ("sample", f"sampling ({steps} steps + decode)")):
        ax.plot(FACTORS, [rows[f][key] / rows[1][key] for f in FACTORS], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(FACTORS, [f"f={f}" for f in FACTORS])
    ax.set_ylabel("speed-up over pixels (f=1)")
    ax.set_title(f"LDM-f vs LDM-1, {SIZE}x{SIZE} images, same UNet")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2, help="timings per figure; the fastest counts")
    parser.add_argument("--precision", default="auto", choices=CHOICES)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)
    precision = resolve(args.precision, torch.device("cpu"), "--precision")
    rows = {f: measure(f, args.batch, args.steps, args.repeats, precision) for f in FACTORS}
    if args.plot:
        plot(rows, args.plot, args.steps)
    figures = {"precision": precision}
    for f in FACTORS:
        figures |= {f"f{f}_train_img_s": rows[f]["train"], f"f{f}_sample_img_s": rows[f]["sample"]}
        if f > 1:
            figures |= {f"f{f}_encode_img_s": rows[f]["encode"], f"f{f}_train_speedup": rows[f]["train"] / rows[1]["train"],
                        f"f{f}_sample_speedup": rows[f]["sample"] / rows[1]["sample"]}
    report(figures, args.json)


if __name__ == "__main__":
    main()
