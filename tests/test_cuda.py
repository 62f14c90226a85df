"""On a CUDA GPU (bench/gpu.sh runs these where a session is lent one; CI has none, so they skip there):
bf16 autocast against fp32, the attention on SDPA's flash kernel, the CLI training and sampling on the
GPU, and DDP under torchrun on one GPU with NCCL."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY, run_cli, train
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from ldmcli.diffusion.unet import UNet, UNetConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these on a lent one)")


def _unet_and_batch():
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                     attention_levels=[2], num_heads=4, context_dim=64)
    unet = UNet(cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # the zero-initialised output layers would hide any difference
    x, t, ctx = torch.randn(8, 4, 16, 16), torch.randint(0, 1000, (8,)), torch.randn(8, 12, 64)
    return unet, (x, t, ctx)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


def test_bf16_autocast_on_the_gpu_is_within_a_percent_or_two_of_fp32_on_the_cpu():
    unet, (x, t, ctx) = _unet_and_batch()
    ref = unet(x, t, context=ctx)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad(set_to_none=True)
    gpu = unet.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda(), t.cuda(), context=ctx.cuda())
    out.float().square().mean().backward()
    assert _relative(out.float(), ref) < 0.02
    for p, g in zip(gpu.parameters(), ref_grads):
        assert torch.nn.functional.cosine_similarity(p.grad.double().cpu().flatten(), g.double().flatten(), dim=0) > 0.99


def test_attention_runs_on_the_flash_kernel_forward_and_backward():
    unet, (x, t, ctx) = _unet_and_batch()
    unet = unet.cuda()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        out = unet(x.cuda(), t.cuda(), context=ctx.cuda())  # raises if flash cannot take these shapes
    out.float().mean().backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_cli_trains_on_the_gpu_and_samples_there(digits_shards, tmp_path_factory, tmp_path):
    model = train(tmp_path_factory, digits_shards, "--set", "conditioner.kind=class")
    result = run_cli("sample", "--model", model, "--class", "3", "--n", "2", "--steps", "3", "--device", "cuda", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "00001.png").size == (16, 16)


def test_ddp_under_torchrun_on_one_gpu_with_nccl(digits_shards, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "ldmcli",
           "train-diffusion", str(digits_shards), "--out", str(tmp_path / "run"), *TINY, "--set", "train.steps=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
