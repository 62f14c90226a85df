"""Where the demo's two training steps spend their time, and whether channels-last maps would help them.

Builds the demo's autoencoder (recipes/demo-ae-shapes.toml, 32 px crops) and its text-to-image UNet with
its text encoder (recipes/demo-ldm-shapes.toml, 3x16x16 latents) from random weights, at the recipes'
batch of 32, and times one step of each (forward, backward, fused AdamW) in NCHW against channels-last,
alternated, best of `--repeats`, in `--precision` (auto: bf16 where it is native). A profile of the NCHW
step gives the convolutions' and matmuls' shares of its CPU time and the convolutions' rate (FLOPs
counted by FlopCounterMode).
The baseline is the layout the training loop uses (NCHW); prints `name: value` lines last.
  python bench/demo_steps.py --json demo_steps.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ldmcli import allocator
from ldmcli.autoencoder.config import AutoencoderRecipe
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.config import load_recipe
from ldmcli.diffusion import model as M
from ldmcli.diffusion.config import DiffusionRecipe
from ldmcli.precision import CHOICES, autocast, resolve
from report import report
from timing import alternated_best_s

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def training_step(params, loss_fn, precision: str):
    """One forward under the precision's autocast, backward and fused AdamW step: the training loop's work."""
    opt = torch.optim.AdamW(list(params), lr=1e-4, fused=True)

    def step() -> None:
        with autocast(CPU, precision):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def autoencoder_step(channels_last: bool, precision: str):
    recipe = load_recipe(AutoencoderRecipe, ROOT / "recipes" / "demo-ae-shapes.toml")
    torch.manual_seed(0)
    model = Autoencoder(recipe.model).train()
    x = torch.rand(recipe.train.batch_size, 3, recipe.train_crop, recipe.train_crop) * 2 - 1
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return training_step(model.parameters(), lambda: (model.decode(model.encode(x)).float() - x).abs().mean(), precision)


def latent_step(channels_last: bool, precision: str):
    recipe = M.resolve(load_recipe(DiffusionRecipe, ROOT / "recipes" / "demo-ldm-shapes.toml"), channels=3, size=16)
    torch.manual_seed(0)
    unet, cond = M.build(recipe)
    unet.train()
    cond.train()
    batch = recipe.train.batch_size
    x = torch.randn(batch, 3, 16, 16)
    t = torch.randint(0, 1000, (batch,))
    texts = ["a large yellow circle above a small green square"] * batch
    if channels_last:
        unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return training_step([*unet.parameters(), *cond.parameters()], lambda: F.mse_loss(unet(x, t, **cond(texts)).float(), x), precision)


def profile(step) -> tuple[float, float, float]:
    """Convolutions' and matmuls' shares of the step's self CPU time, and the convolutions' GFLOP/s."""
    with FlopCounterMode(display=False) as counter:
        step()
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    with torch.profiler.profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return conv / total, matmul / total, conv_flops / (conv * 1e-6) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per layout; the fastest counts")
    parser.add_argument("--precision", default="auto", choices=CHOICES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)
    precision = resolve(args.precision, CPU, "--precision")
    figures = {"precision": precision, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, make in (("autoencoder", autoencoder_step), ("latent", latent_step)):
        nchw, channels_last = make(False, precision), make(True, precision)
        nchw_ms, cl_ms = (s * 1e3 for s in alternated_best_s([nchw, channels_last], args.repeats, CPU))
        conv_share, matmul_share, rate = profile(nchw)
        figures |= {f"{name}_nchw_ms": nchw_ms, f"{name}_channels_last_ms": cl_ms, f"{name}_channels_last_speedup": nchw_ms / cl_ms,
                    f"{name}_conv_share": conv_share, f"{name}_matmul_share": matmul_share, f"{name}_conv_gflop_s": rate}
    report(figures, args.json)


if __name__ == "__main__":
    main()
