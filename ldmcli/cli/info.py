"""`ldm info`: what this machine offers ldmcli, and which optional pretrained files it can see."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ldmcli import __version__, allocator
from ldmcli.precision import native_bf16

OPTIONAL_WEIGHTS = {
    "LPIPS AlexNet backbone": "alexnet-owt-7be5be79.pth",
    "LPIPS VGG16 backbone": "vgg16-397923af.pth",
    "LPIPS SqueezeNet backbone": "squeezenet1_1-b8a52dc0.pth",
    "FID Inception (pytorch-fid port)": "pt_inception-2015-12-05-6726825d.pth",
}


def hub_checkpoints() -> Path:
    """Where torchvision and pytorch-fid look for downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def info() -> None:
    """Show versions, the compute device, bf16 support and the optional weight files found.

    Example: ldm info
    """
    console = Console()
    table = Table(show_header=False, box=None)
    table.add_row("ldmcli", __version__)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
    table.add_row("cuda devices", devices)
    table.add_row("cpu threads", f"{torch.get_num_threads()} (cores: {os.cpu_count()})")
    native = [d for d in ("cuda", "cpu") if (d == "cpu" or cuda) and native_bf16(torch.device(d))]
    table.add_row("bf16 autocast", f"native on {' and '.join(native)}" if native else "not native here: precision auto runs fp32")
    table.add_row("cpu capability", torch.backends.cpu.get_cpu_capability())
    table.add_row("malloc", allocator.describe())
    table.add_row("weights dir", str(hub_checkpoints()))
    for label, name in OPTIONAL_WEIGHTS.items():
        found = (hub_checkpoints() / name).is_file()
        table.add_row(label, f"[green]found[/] {name}" if found else f"[dim]missing[/] {name}")
    console.print(table)
