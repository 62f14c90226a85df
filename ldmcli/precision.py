"""Which arithmetic the networks run in: bf16 autocast only where the hardware does bf16 natively.

On a CPU with AVX-512 (oneDNN's bf16 kernels) bf16 matmuls run several times faster than fp32; on an
AVX2-only CPU (most AMD and older Intel desktops) torch falls back to reference kernels that ran a 3x3
convolution 25-37x and a matmul 20-100x slower than fp32 (bench/precision.py on a 2-core AMD EPYC). So the
default, "auto", picks bf16 only where it is fast; an explicit "bf16" is honoured, with a warning where
it is slow.
"""

from __future__ import annotations

import contextlib

import torch
from rich.console import Console

from ldmcli.errors import UserError

CHOICES = ("auto", "bf16", "fp32")
_warned: set[str] = set()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up rather than slowing it down."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def check(precision: str, option: str = "precision") -> None:
    """An unknown name is the user's error, caught before any model is loaded."""
    if precision not in CHOICES:
        raise UserError(f"{option} must be one of {', '.join(CHOICES)}, got '{precision}'")


def resolve(precision: str, device: torch.device, option: str = "precision") -> str:
    """"auto" -> "bf16" or "fp32" for this device."""
    check(precision, option)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device) and device.type not in _warned:
        _warned.add(device.type)
        Console(stderr=True).print(f"[yellow]warning:[/] this {device.type} has no native bf16: bf16 runs far slower than fp32 here (use {option} auto or fp32)")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a resolved precision, a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
