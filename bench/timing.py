"""Side-by-side timing shared by the benchmarks that hold ldmcli against diffusers."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternated_rates(fns, x: torch.Tensor, precision: str, repeats: int) -> list[float]:
    """Images/s of each fn on batch x (no grad, bf16 autocast or fp32), best of `repeats`, timed in
    alternation so that load from other processes hits all alike."""
    best = [float("inf")] * len(fns)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for fn in fns:
            fn(x)
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                synchronize(x.device)
                start = time.perf_counter()
                fn(x)
                synchronize(x.device)
                best[i] = min(best[i], time.perf_counter() - start)
    return [x.shape[0] / b for b in best]
