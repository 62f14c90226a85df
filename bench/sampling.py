"""Sampling speed of every sampler at 20 and 50 steps on the digits model, in images per second; and
model evaluations per second of our UNet against diffusers' UNet2DConditionModel at the architecture of
bench/unet_train.py (batch 32, no grad, bf16 autocast and fp32, alternated, best of `--repeats`; fp32
alone where bf16 is not native, unless `--precisions both`). `--dtype auto` samples in bf16 where it is native.

Takes `--model DIR`, or trains a throwaway model of recipes/dm-pixel-digits.toml for one step in a temp
dir (its speed is the architecture's; its weights do not matter). Class-conditional with guidance, so
every model call is one doubled batch. With --compile, both UNets are also timed under torch.compile
with frozen weights (ldmcli.nn.compiled, what `ldm sample --compile` runs; in --dtype) from a cold inductor
cache, with their compile seconds, and so is the sampler on the digits model. Prints `name: value`
lines last; never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ldmcli import allocator
from ldmcli.diffusion import model as M
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.nn.compiled import FrozenCompiled
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.precision import CHOICES, autocast, resolve
from ldmcli.train.distributed import resolve_device
from cli import ldm
from report import report
from timing import add_precision_option, alternated_rates, precisions, synchronize
from unet_train import batches, forward, ours, theirs

ROOT = Path(__file__).resolve().parents[1]


def throwaway_model(tmp: Path) -> Path:
    ldm("data", "build", "digits", "--out", str(tmp / "digits"), "--size", "32", "--count", "64")
    ldm("train-diffusion", str(tmp / "digits"), "--recipe", str(ROOT / "recipes" / "dm-pixel-digits.toml"), "--out", str(tmp / "run"),
        "--set", "train.steps=1", "--set", "train.sample_every=0", "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=16",
        "--set", "train.batch_size=4", "--quiet")
    return tmp / "run" / "model"


def images_per_s(model, device, sampler: str, steps: int, n: int, batch: int, dtype: str, repeats: int,
                 compiled: bool = False) -> float:
    """The best of `repeats` timings: on a shared machine the least disturbed run is the sampler's own speed."""
    pipe = Pipeline(model, Settings(sampler=sampler, steps=steps, precision=dtype, compile=compiled), device)
    classes = [k % model.recipe.conditioner.num_classes for k in range(n)] if model.cond.key == "cls" else [None] * n
    if compiled:
        pipe(classes[:batch], list(range(batch)))  # the compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, batch):
            pipe(classes[i:i + batch], list(range(i, min(i + batch, n))))
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return n / best


def unets_and_batch(device: torch.device) -> tuple:
    """Our UNet, diffusers', and one batch of the unet_train architecture, on `device`."""
    torch.manual_seed(0)
    return ours().eval().to(device), theirs().eval().to(device), *batches(1, 0, device=device)[0][:3]


def forward_rates(precision: str, repeats: int, device: torch.device) -> list[float]:
    """Image evaluations per second of our UNet and diffusers' on one batch of the unet_train architecture."""
    mine, diffusers_unet, x, t, ctx = unets_and_batch(device)
    return alternated_rates([lambda b: forward(mine, "ours", b, t, ctx), lambda b: forward(diffusers_unet, "diffusers", b, t, ctx)],
                            x, precision, repeats)


def compiled_forward_rates(repeats: int, device: torch.device, precision: str) -> dict:
    """Both UNets eager and compiled with frozen weights, alternated; compile seconds from a cold cache."""
    mine, diffusers_unet, x, t, ctx = unets_and_batch(device)
    fast_mine, fast_theirs = FrozenCompiled(mine), FrozenCompiled(diffusers_unet)
    figures = {}
    for name, model, which in (("ours", fast_mine, "ours"), ("diffusers", fast_theirs, "diffusers")):
        start = time.perf_counter()
        with torch.no_grad(), autocast(device, precision):
            forward(model, which, x, t, ctx)
        synchronize(device)
        figures[f"{name}_compile_s"] = round(time.perf_counter() - start, 1)
    rates = alternated_rates([lambda b: forward(mine, "ours", b, t, ctx), lambda b: forward(diffusers_unet, "diffusers", b, t, ctx),
                              lambda b: forward(fast_mine, "ours", b, t, ctx), lambda b: forward(fast_theirs, "diffusers", b, t, ctx)],
                             x, precision, repeats)
    for key, rate in zip(("ours_eager", "diffusers_eager", "ours_compiled", "diffusers_compiled"), rates):
        figures[f"{key}_forward_img_per_s_{precision}"] = round(rate, 1)
    figures["compiled_speedup_vs_eager"] = round(rates[2] / rates[0], 3)
    figures["compiled_speedup_vs_diffusers_eager"] = round(rates[2] / rates[1], 3)
    figures["compiled_speedup_vs_diffusers_compiled"] = round(rates[2] / rates[3], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="diffusion model dir (default: a throwaway dm-pixel-digits model)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--n", type=int, default=16, help="images per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timings per figure; the fastest counts")
    parser.add_argument("--dtype", default="auto", choices=CHOICES, help="what the samplers run in")
    add_precision_option(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--forward-repeats", type=int, default=10, help="timed forwards per UNet against diffusers")
    parser.add_argument("--compile", action="store_true", help="also time the compiled UNets and sampler (minutes of compiling)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)
    cache = tempfile.TemporaryDirectory(prefix="inductor-") if args.compile else None  # removed at exit
    if cache:  # a cold inductor cache: the compile time is what a user first pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name

    device = resolve_device(args.device)
    args.dtype = resolve(args.dtype, device, "--dtype")
    with tempfile.TemporaryDirectory() as tmp:
        model = M.load(args.model or throwaway_model(Path(tmp)), device)
    fs = model.recipe.first_stage
    print(f"model: {fs.size * model.first_stage.factor}px, {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M UNet parameters, "
          f"device {device}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}", file=sys.stderr)
    images_per_s(model, device, "ddim", 2, args.batch, args.batch, args.dtype, 1)  # warm-up
    figures = {}
    for steps in args.steps:
        for name in args.samplers:
            rate = images_per_s(model, device, name, steps, args.n, args.batch, args.dtype, args.repeats)
            nfe = steps + SAMPLERS[name].extra_evals(steps)
            print(f"{name} {steps} steps ({nfe} model calls): {rate:.3f} img/s", file=sys.stderr)
            figures[f"sampling_img_per_s_{name}_{steps}"] = round(rate, 3)
            figures[f"model_evals_{name}_{steps}"] = nfe
    timed = precisions(args.precisions, device)
    for precision in timed:
        mine, theirs_rate = forward_rates(precision, args.forward_repeats, device)
        figures[f"ours_forward_img_per_s_{precision}"] = round(mine, 1)
        figures[f"diffusers_forward_img_per_s_{precision}"] = round(theirs_rate, 1)
    figures["forward_speedup_vs_diffusers"] = round(
        max(figures[f"ours_forward_img_per_s_{p}"] for p in timed) / max(figures[f"diffusers_forward_img_per_s_{p}"] for p in timed), 3)
    if args.compile:
        name, steps = args.samplers[0], args.steps[0]
        eager = images_per_s(model, device, name, steps, args.n, args.batch, args.dtype, args.repeats)
        start = time.perf_counter()
        fast = images_per_s(model, device, name, steps, args.n, args.batch, args.dtype, args.repeats, compiled=True)
        figures[f"sampling_img_per_s_{name}_{steps}_compiled"] = round(fast, 3)
        figures[f"sampling_compiled_speedup_{name}_{steps}"] = round(fast / eager, 3)
        figures["sampling_compile_and_timing_s"] = round(time.perf_counter() - start, 1)
        figures |= compiled_forward_rates(args.forward_repeats, device, args.dtype)
    report(figures, args.json)


if __name__ == "__main__":
    main()
