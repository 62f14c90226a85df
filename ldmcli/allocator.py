"""Keep freed tensor memory in the process instead of handing it back to the kernel after every op.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising with the blocks freed to at
most 32 MiB) with a fresh mmap and unmaps it on free, so each large activation of a training step is
zero-filled by the kernel again, page by page: 1.5 million page faults a step for a 64 px pixel UNet at
batch 32 (1.35-1.40x faster without), up to 11,000 per batch of 16 when encoding or decoding 64 px photos
(bench/allocator.py). torch's CPU allocator has no cache of its own (CUDA's has), so CPU tensors pay this
on every step. Served from the heap, and with freed memory left there, the next step reuses the same
pages without a fault. This is what tcmalloc or jemalloc under LD_PRELOAD buy, done in-process with
mallopt so that nothing has to be installed or preloaded.

LDM_MALLOC=system keeps glibc's defaults. Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import os

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

ENV = "LDM_MALLOC"
CHOICES = ("reuse", "system")
# Free memory at the top of the heap beyond this goes back to the kernel; below it stays for reuse.
_KEEP_BYTES = 1 << 30
_applied = False


def configure(mode: str | None = None) -> bool:
    """Apply `mode` (default: $LDM_MALLOC, else "reuse"); True when malloc's settings changed."""
    mode = mode or os.environ.get(ENV) or "reuse"  # an empty LDM_MALLOC counts as unset
    if mode not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got '{mode}'")
    if mode == "system":
        return False
    libc = _glibc()
    if libc is None:
        return False
    global _applied
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    return _applied


def describe() -> str:
    """This process's setting, for `ldm info`."""
    if _applied:
        return f"reuse ({ENV}=system: glibc's defaults)"
    return "glibc's defaults" if supported() else "the C library's own (not glibc)"


def supported() -> bool:
    """Whether this process's C library is glibc, whose malloc `configure` sets."""
    return _glibc() is not None


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library already loaded in this process, when it is glibc (no lookup on disk at start-up)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc
