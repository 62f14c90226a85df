"""Side-by-side timing shared by the benchmarks that hold ldmcli against diffusers."""

from __future__ import annotations

import argparse
import functools
import time

import torch

from ldmcli.precision import native_bf16

PRECISION_CHOICES = ("auto", "both", "bf16", "fp32")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precisions", default="auto", choices=PRECISION_CHOICES,
                        help="auto: bf16 autocast and fp32 where bf16 is native, fp32 alone elsewhere; both: time both anyway")


def precisions(choice: str, device: torch.device) -> list[str]:
    """What a bench times. Without native bf16 (an AVX2-only CPU) bf16 autocast runs reference kernels
    10-100x slower than fp32, which nobody would train or sample with: "auto" leaves it out there."""
    if choice == "auto":
        return ["bf16", "fp32"] if native_bf16(device) else ["fp32"]
    return ["bf16", "fp32"] if choice == "both" else [choice]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternated_best_s(fns, repeats: int, device: torch.device) -> list[float]:
    """Best wall-clock seconds of each zero-argument fn over `repeats`, after one warm-up call each,
    timed in alternation so that load from other processes hits all alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def alternated_rates(fns, x: torch.Tensor, precision: str, repeats: int) -> list[float]:
    """Images/s of each fn on batch x (no grad, bf16 autocast or fp32), best of `repeats`, alternated."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        best = alternated_best_s([functools.partial(fn, x) for fn in fns], repeats, x.device)
    return [x.shape[0] / b for b in best]
