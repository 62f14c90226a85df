"""bf16 autocast against fp32 on this machine, for the layers a latent UNet spends its time in: a 3x3
convolution and a linear layer at the demo's sizes, and a large matmul. Shows why `precision = "auto"`
picks bf16 on one CPU and fp32 on another (`native_bf16` is what auto goes by).

    python bench/precision.py [--device cpu] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import report
from timing import synchronize

from ldmcli.precision import native_bf16


def best_ms(fn, device: torch.device, bf16: bool, repeats: int) -> float:
    best = float("inf")
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        fn()
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, w = rand(32, 96, 16, 16), rand(96, 96, 3, 3)
    tokens, proj = rand(32 * 64, 96), rand(384, 96)
    a, b = rand(512, 512), rand(512, 512)
    cases = {
        "conv3x3_32x96x16x16": (lambda: F.conv2d(x, w, padding=1), 2 * 32 * 96 * 96 * 9 * 256),
        "linear_2048x96x384": (lambda: F.linear(tokens, proj), 2 * 2048 * 96 * 384),
        "matmul_512": (lambda: a @ b, 2 * 512**3),
    }
    figures: dict = {"device": args.device, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(device)}
    for name, (fn, flops) in cases.items():
        fp32 = best_ms(fn, device, False, args.repeats)
        bf16 = best_ms(fn, device, True, args.repeats)
        figures[f"{name}_fp32_ms"] = round(fp32, 3)
        figures[f"{name}_bf16_ms"] = round(bf16, 3)
        figures[f"{name}_bf16_speedup"] = round(fp32 / bf16, 3)
        figures[f"{name}_fp32_gflop_s"] = round(flops / fp32 / 1e6, 1)
    report(figures, args.json)


if __name__ == "__main__":
    main()
