"""The in-memory cache of latents for images encoded on the fly: the same latents as encoding, each distinct
image encoded once, bounded memory, and its hit rate in a real super-resolution run's metrics."""

import json

import torch
from conftest import TINY, run_cli
from test_train_diffusion import tiny_ae  # noqa: F401  (fixture)

from ldmcli.diffusion.encode_cache import EncodeCache


class Counting:
    """A deterministic stand-in encoder that remembers how many images it saw."""

    def __init__(self):
        self.seen = 0
        self.conv = torch.nn.Conv2d(3, 2, 2, stride=2)

    def __call__(self, x):
        self.seen += len(x)
        with torch.no_grad():
            return self.conv(x)


def test_cached_latents_are_the_encoders_and_each_image_is_encoded_once():
    enc = Counting()
    cache = EncodeCache(enc, max_bytes=1 << 20)
    a, b, c = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = torch.stack([a, b, a.flip(-1), a])
    assert torch.allclose(cache(first), enc.conv(first).detach(), atol=1e-6)
    assert enc.seen == 3 and cache.hits == 1 and len(cache.store) == 3  # a twice in one batch: encoded once
    second = torch.stack([b, c, a.flip(-1)])
    assert torch.allclose(cache(second), enc.conv(second).detach(), atol=1e-6)
    assert enc.seen == 4 and cache.take_hit_rate() == 3 / 7 and cache.take_hit_rate() == 0


def test_a_full_cache_still_encodes_but_keeps_no_more():
    enc = Counting()
    latent_bytes = 2 * 4 * 4 * 4
    cache = EncodeCache(enc, max_bytes=2 * latent_bytes)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cache(images)
    assert len(cache.store) == 2 and cache.bytes == 2 * latent_bytes
    assert torch.allclose(cache(images), enc.conv(images).detach(), atol=1e-6)
    assert enc.seen == 6  # the two kept come from the cache, the two others are encoded again


def test_super_resolution_through_an_autoencoder_reports_its_hit_rate(tiny_ae, tmp_path):  # noqa: F811
    """Six pictures (twelve with flips) drawn 24 times as targets, and as the residual's upsampled inputs:
    at most 24 of the 48 latents are new."""
    shards = tmp_path / "six"
    assert run_cli("data", "build", "digits", "--out", shards, "--size", "16", "--count", "6", "--shard-size", "6").exit_code == 0
    args = [shards, "--ae", tiny_ae, *TINY, "--task", "sr", "--set", "task.residual=true", "--set", "train.steps=6",
            "--set", "train.log_every=1", "--set", "unet.channel_mult=[1]"]
    assert run_cli("train-diffusion", *args, "--out", tmp_path / "cached").exit_code == 0
    hits = [json.loads(line)["encode_cache_hits"] for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert sum(hits) / len(hits) >= 0.5 and hits[0] == 0, hits
    result = run_cli("train-diffusion", *args, "--out", tmp_path / "plain", "--set", "first_stage.cache_mb=0")
    assert result.exit_code == 0, result.output
    assert "encode_cache_hits" not in (tmp_path / "plain" / "metrics.jsonl").read_text()
    bad = run_cli("train-diffusion", *args, "--out", tmp_path / "bad", "--set", "first_stage.cache_mb=-1")
    assert bad.exit_code == 2 and "first_stage.cache_mb must be >= 0" in bad.output
