import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from pytorch_fid import inception as pfi
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from ldmcli.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    """Run `ldm ARGS` in-process, as a user would type it."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_ldm(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m ldmcli ARGS` in a fresh process (signals, torchrun, exit codes)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ldmcli", *map(str, args)], env=full_env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """A small built-in digits set at 16 px, built once through the CLI."""
    out = tmp_path_factory.mktemp("digits")
    result = run_cli("data", "build", "digits", "--out", out, "--size", "16", "--count", "600", "--shard-size", "200")
    assert result.exit_code == 0, result.output
    return out


TINY = [
    "--set", "unet.model_channels=8", "--set", "unet.channel_mult=[1,2]", "--set", "unet.num_res_blocks=1",
    "--set", "unet.attention_levels=[2]", "--set", "unet.num_heads=2", "--set", "data.size=16",
    "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=16", "--set", "train.batch_size=4",
    "--set", "train.steps=2", "--set", "train.lr=0.01", "--quiet",
]


def train(tmp_path_factory, shards, *extra):
    """A tiny diffusion model (2 steps at 16 px) trained through the CLI; returns its model dir."""
    run = tmp_path_factory.mktemp("run")
    result = run_cli("train-diffusion", shards, "--out", run, *TINY, *extra)
    assert result.exit_code == 0, result.output
    return run / "model"


@pytest.fixture(scope="session")
def text_model(tmp_path_factory):
    shards = tmp_path_factory.mktemp("shapes")
    result = run_cli("data", "build", "shapes", "--out", shards, "--size", "16", "--count", "24", "--shard-size", "24")
    assert result.exit_code == 0, result.output
    return train(tmp_path_factory, shards, "--set", "conditioner.kind=text", "--set", "conditioner.width=16",
                 "--set", "conditioner.layers=1", "--set", "conditioner.heads=2", "--set", "conditioner.head_dim=8",
                 "--set", "conditioner.max_length=16")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A registered tiny open_clip architecture and its random weights as safetensors."""
    root = tmp_path_factory.mktemp("clip")
    arch = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}}
    (root / "TinyCLIP-test.json").write_text(json.dumps(arch))
    open_clip.add_model_config(root / "TinyCLIP-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("TinyCLIP-test", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "tiny.safetensors"))
    return model.eval(), root / "tiny.safetensors"


def random_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception layout (torchvision's with the FID blocks), randomly initialised:
    Kaiming-normal convs, or the features vanish to ~1e-8 over 40+ layers; a classifier with unit-variance
    weights, so that the logits of different images differ and the Inception Score is not trivially 1."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = pfi.FIDInceptionA(192, 32), pfi.FIDInceptionA(256, 64), pfi.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = pfi.FIDInceptionC(768, 128), pfi.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = pfi.FIDInceptionC(768, 160), pfi.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pfi.FIDInceptionE_1(1280), pfi.FIDInceptionE_2(2048)
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    nn.init.normal_(net.fc.weight)
    return net
