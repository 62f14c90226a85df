"""Training-step speed of our UNet against diffusers' UNet2DConditionModel at the same architecture:
block widths (64, 128, 256), 2 res blocks a level, cross-attention at the two lower levels and the middle,
8 heads, context 16 x 256, latents 4 x 16 x 16, batch 32, AdamW, MSE loss.

Each configuration runs in its own process (so peak memory is its own): ours with bf16 autocast and
fp32; diffusers with bf16 autocast and fp32, each with torch's default AdamW (what diffusers' training
scripts use) and with the fused AdamW we use; `diffusers_img_s` is the best of those. Where bf16 is
not native (an AVX2-only CPU) only fp32 is timed, unless `--precisions both`. MFU is our step's model
FLOPs (forward + backward, counted by torch's FlopCounterMode) per second, in bf16 where it is timed,
over the matmul peak of that precision measured in the same run. A short run of ours in bf16 and fp32
from the same seed on the same batches shows whether bf16 changes the loss curve. With --compile both
models also run under torch.compile in that precision (fused AdamW each), from a cold inductor cache, and
the seconds the first steps spent compiling are reported. --device cuda times a GPU (peak memory: the allocator's; MFU against
a large bf16 matmul there), where --batch should be larger. Prints `name: value` lines last; never
asserts on time.
  python bench/unet_train.py --json unet_train.json [--compile] [--device cuda --batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ldmcli import allocator
from report import report
from timing import add_precision_option, precisions, synchronize

B, C, S, CTX_LEN, CTX_DIM = 32, 4, 16, 16, 256


def ours() -> torch.nn.Module:
    from ldmcli.diffusion.unet import UNet, UNetConfig

    cfg = UNetConfig(in_channels=C, out_channels=C, model_channels=64, channel_mult=[1, 2, 4], num_res_blocks=2,
                     attention_levels=[2, 4], num_heads=8, context_dim=CTX_DIM, scale_shift=False)
    return UNet(cfg)


def theirs() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=S, in_channels=C, out_channels=C, block_out_channels=(64, 128, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CTX_DIM, attention_head_dim=8,
    )


def forward(model, which: str, x, t, ctx):
    if which == "ours":
        return model(x, t, context=ctx)
    return model(x, t, encoder_hidden_states=ctx).sample


def batches(n: int, seed: int, batch: int = B, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    return [tuple(v.to(device) for v in (torch.randn(batch, C, S, S, generator=g), torch.randint(0, 1000, (batch,), generator=g),
                                         torch.randn(batch, CTX_LEN, CTX_DIM, generator=g), torch.randn(batch, C, S, S, generator=g)))
            for _ in range(n)]


def step_fn(model, which: str, precision: str, fused: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)

    def step(x, t, ctx, target) -> float:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.mse_loss(forward(model, which, x, t, ctx).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def run_one(which: str, precision: str, fused: bool, steps: int, repeats: int, compiled: bool = False,
            batch: int = B, device: str = "cpu") -> dict:
    """Child process: images per second (best of `repeats`), this process's peak memory (RSS; on a GPU
    the allocator's peak), and with `compiled` the seconds the warm-up steps took (compilation included).
    Each step ends by reading the loss, which also waits for a GPU's queued work."""
    torch.manual_seed(0)
    model = (ours if which == "ours" else theirs)().train().to(device)
    if compiled:
        model.compile()
    step = step_fn(model, which, precision, fused)
    data = batches(4, 1, batch, device)
    start = time.perf_counter()
    for k in range(3):
        step(*data[k % 4])
    warmup = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(steps):
            step(*data[k % 4])
        best = min(best, (time.perf_counter() - start) / steps)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if torch.device(device).type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"img_s": batch / best, "peak_mem_mb": peak,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "warmup_s": warmup}


def model_flops() -> float:
    """FLOPs of one training step of ours (forward + backward) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ours()
    x, t, ctx, target = batches(1, 0)[0]
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(forward(model, "ours", x, t, ctx), target).backward()
    return counter.get_total_flops() / B


def matmul_peak(device: str, precision: str) -> float:
    n = 8192 if torch.device(device).type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        synchronize(torch.device(device))
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        synchronize(torch.device(device))
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * n**3 / best


def loss_curves(steps: int, device: str = "cpu") -> tuple[list[float], list[float]]:
    curves = []
    data = batches(steps, 7, B, device)
    for precision in ("bf16", "fp32"):
        torch.manual_seed(0)
        model = ours().train().to(device)
        step = step_fn(model, "ours", precision, True)
        curves.append([step(*d) for d in data])
    return curves[0], curves[1]


def child(args) -> None:
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)
    print(json.dumps(run_one(args.which, args.precision, args.fused, args.steps, args.repeats, args.compiled, args.batch, args.device)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curve-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=B, help="images per training step (a GPU wants more than 32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_precision_option(parser)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile (minutes of compiling)")
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--which", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        child(args)
        return

    def measure(which: str, precision: str, fused: bool, compiled: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--which", which, "--precision", precision, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--batch", str(args.batch), "--device", args.device,
               *(["--fused"] if fused else []), *(["--compiled"] if compiled else [])]
        with tempfile.TemporaryDirectory() as cache:
            # compiled: a cold inductor cache, so the warm-up is the compile time a user first pays
            env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache} if compiled else None
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    timed = precisions(args.precisions, torch.device(args.device))
    main_p = "bf16" if "bf16" in timed else "fp32"  # what MFU, memory and compiling are measured in
    configs = [("ours", p, True) for p in timed] + [("diffusers", p, f) for p in timed for f in (False, True)]
    results = {key: measure(*key) for key in configs}
    mine = max(results[("ours", p, True)]["img_s"] for p in timed)
    theirs_best = max(r["img_s"] for k, r in results.items() if k[0] == "diffusers")
    flops, peak = model_flops(), matmul_peak(args.device, main_p)
    figures = {
        "device": args.device,
        "batch": args.batch,
        "ours_params_m": results[("ours", main_p, True)]["params_m"],
        "diffusers_params_m": results[("diffusers", main_p, False)]["params_m"],
    }
    for p in timed:
        figures |= {f"ours_{p}_img_s": results[("ours", p, True)]["img_s"],
                    f"diffusers_{p}_img_s": results[("diffusers", p, False)]["img_s"],
                    f"diffusers_{p}_fused_adamw_img_s": results[("diffusers", p, True)]["img_s"]}
    figures |= {
        "ours_img_s": mine,
        "diffusers_img_s": theirs_best,
        "speedup_vs_diffusers": mine / theirs_best,
        "gflop_per_image": flops / 1e9,
        f"{main_p}_matmul_peak_gflop_s": peak / 1e9,
        "mfu": flops * results[("ours", main_p, True)]["img_s"] / peak,
        "peak_mem_mb": results[("ours", main_p, True)]["peak_mem_mb"],
        "diffusers_peak_mem_mb": results[("diffusers", main_p, False)]["peak_mem_mb"],
    }
    if "bf16" in timed:
        bf16_curve, fp32_curve = loss_curves(args.curve_steps, args.device)
        tail = max(1, args.curve_steps // 3)
        last_bf16, last_fp32 = sum(bf16_curve[-tail:]) / tail, sum(fp32_curve[-tail:]) / tail
        figures |= {"loss_last_third_bf16": last_bf16, "loss_last_third_fp32": last_fp32, "loss_bf16_over_fp32": last_bf16 / last_fp32}
    if args.compile:
        ours_c, theirs_c = measure("ours", main_p, True, True), measure("diffusers", main_p, True, True)
        figures |= {
            "ours_compiled_img_s": ours_c["img_s"],
            "diffusers_compiled_img_s": theirs_c["img_s"],
            "speedup_compiled_vs_diffusers_compiled": ours_c["img_s"] / theirs_c["img_s"],
            "speedup_ours_compiled_vs_diffusers": ours_c["img_s"] / theirs_best,
            "ours_compile_warmup_s": ours_c["warmup_s"],
            "diffusers_compile_warmup_s": theirs_c["warmup_s"],
            "mfu_compiled": flops * ours_c["img_s"] / peak,
        }
    report(figures, args.json)


if __name__ == "__main__":
    main()
