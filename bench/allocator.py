"""What `ldm`'s malloc setting (ldmcli/allocator.py: freed memory stays in the process for reuse) buys on
the CPU, against glibc's defaults (LDM_MALLOC=system), per workload: the anchor UNet of
bench/unet_train.py (training step and forward, batch 32), the photos autoencoder (encode and decode,
batch 16 at 64 px; a training step at its recipe's batch and crop, L1 only) and the pixel-space UNet of bench/latent_vs_pixel.py (training step, batch 32 at
64 px). Each (workload, setting) runs in its own process, so its page faults and peak memory are its
own; the two settings alternate over `--rounds` and the fastest call counts. Precision: bf16 autocast
where the CPU does bf16 natively, else fp32. Prints `name: value` lines last; never asserts on time.

  python bench/allocator.py --json allocator.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ldmcli import allocator
from ldmcli.precision import autocast, resolve
from report import report

WORKLOADS = ("unet_train", "unet_forward", "ae_train", "ae_encode", "ae_decode", "pixel_train")


def workload(name: str, precision: str):
    """A zero-argument call doing one batch of `name`, and the images it handles."""
    torch.manual_seed(0)
    cast = autocast(torch.device("cpu"), precision)
    if name.startswith("unet"):
        from unet_train import batches, forward, ours, step_fn

        model = ours()
        x, t, ctx, target = batches(1, 0)[0]
        if name == "unet_train":
            step = step_fn(model.train(), "ours", precision, True)
            return lambda: step(x, t, ctx, target), x.shape[0]
        model.eval()

        def fwd():
            with torch.no_grad(), cast:
                forward(model, "ours", x, t, ctx)

        return fwd, x.shape[0]
    if name.startswith("ae"):
        from ldmcli.autoencoder.config import AutoencoderRecipe
        from ldmcli.autoencoder.model import Autoencoder
        from ldmcli.config import load_recipe

        recipe = load_recipe(AutoencoderRecipe, Path("recipes/ae-kl-f4-photos.toml"))
        ae = Autoencoder(recipe.model)
        if name == "ae_train":
            opt = torch.optim.AdamW(ae.parameters(), lr=1e-4, fused=True)
            crops = torch.rand(recipe.train.batch_size, 3, recipe.train_crop, recipe.train_crop) * 2 - 1

            def train_step():
                with cast:
                    loss = (ae.decode(ae.encode(crops)).float() - crops).abs().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            return train_step, crops.shape[0]
        ae.eval()
        x = torch.rand(16, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            z = ae.encode(x)
        fn, arg = (ae.encode, x) if name == "ae_encode" else (ae.decode, z)

        def run():
            with torch.no_grad(), cast:
                fn(arg)

        return run, x.shape[0]
    from latent_vs_pixel import unet

    net = unet()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x, t = torch.randn(32, 3, 64, 64), torch.randint(0, 1000, (32,))

    def step():
        with cast:
            loss = F.mse_loss(net(x, t).float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, x.shape[0]


def child(name: str, mode: str, precision: str, calls: int) -> dict:
    allocator.configure(mode)
    fn, images = workload(name, precision)
    for _ in range(2):
        fn()
    best, faults = float("inf"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"img_s": images / best, "faults_per_call": faults / calls,
            "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=4, help="timed calls per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per (workload, setting), alternated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    precision = resolve("auto", torch.device("cpu"))
    if args.child:
        print(json.dumps(child(*args.child, precision, args.calls)))
        return
    figures = {"precision": precision, "threads": torch.get_num_threads()}
    for name in args.workloads:
        best = {}
        for _ in range(args.rounds):
            for mode in ("system", "reuse"):
                cmd = [sys.executable, __file__, "--child", name, mode, "--calls", str(args.calls)]
                out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                if mode not in best or out["img_s"] > best[mode]["img_s"]:
                    best[mode] = out
        for mode in ("system", "reuse"):
            figures |= {f"{name}_{mode}_img_s": best[mode]["img_s"], f"{name}_{mode}_faults_per_call": best[mode]["faults_per_call"],
                        f"{name}_{mode}_peak_mem_mb": best[mode]["peak_mem_mb"]}
        figures[f"{name}_speedup"] = best["reuse"]["img_s"] / best["system"]["img_s"]
    report(figures, args.json)


if __name__ == "__main__":
    main()
