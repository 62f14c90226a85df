"""Shared data and a tiny trained autoencoder for the autoencoder CLI tests (import the fixtures)."""

import io

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from ldmcli.data.shards import encode_png, write_shards

TINY_AE = [
    "--set", "model.channels=8", "--set", "model.channel_mult=[1, 2]", "--set", "model.num_res_blocks=1",
    "--set", "loss.perceptual=none", "--set", "loss.feature_matching_weight=0.1", "--set", "loss.disc_start=10",
    "--set", "loss.disc_channels=8", "--set", "loss.disc_layers=2", "--set", "data.size=32", "--set", "data.num_workers=0",
    "--set", "data.shuffle_buffer=32", "--set", "data.epoch_samples=64", "--set", "train.batch_size=8",
    "--set", "train.lr=2e-3", "--set", "train.betas=[0.5, 0.9]", "--set", "train.log_every=5", "--set", "train.grad_clip=0",
    "--set", "train.ckpt_every=100", "--quiet",
]


def smooth_image(rng: np.random.Generator, size: int) -> Image.Image:
    """A few colour blobs: structured enough for an autoencoder to learn in a few steps."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1, 3)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.1 * r))[..., None] * rng.uniform(0, 1, 3)
    return Image.fromarray(np.clip(img / img.max() * 255, 0, 255).astype(np.uint8))


def labelled_samples(count: int, size: int = 32, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"__key__": f"s{i:04d}", "png": encode_png(smooth_image(rng, size)), "txt": f"blob {i}", "cls": i % 3, "json": {"i": i}}
        for i in range(count)
    ]


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="session")
def blob_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("blobs")
    write_shards(labelled_samples(40), out, "blobs", shard_size=16)
    return out


@pytest.fixture(scope="session")
def tiny_ae(blob_shards, tmp_path_factory):
    """A KL-f2 autoencoder of a few thousand weights trained 40 steps through `ldm train-ae`."""
    run = tmp_path_factory.mktemp("ae") / "run"
    result = run_cli("train-ae", blob_shards, "--out", run, *TINY_AE, "--set", "train.steps=40", "--set", "train.sample_every=20",
                     "--set", "train.ema_decay=0.9")
    assert result.exit_code == 0, result.output
    return run
