"""Pieces of the training loop checked against closed forms: schedule, EMA, accumulation, checkpoints."""

import math

import pytest
import torch
from torch import nn

from ldmcli.config import DataConfig, TrainConfig
from ldmcli.train import TrainTask, distributed, train
from ldmcli.train.ema import EMA
from ldmcli.train.optim import lr_factor


def test_lr_schedule_closed_form():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 110) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(lr_schedule="constant"), 500) == 1.0


def test_ema_follows_warmup_formula():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    expected = 0.0
    for n in range(5):
        with torch.no_grad():
            model.weight.fill_(float(n + 1))
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1)
        ema.update(model)
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


class MeanRegression(TrainTask):
    """Fit a per-channel scale so the image mean matches a fixed target: no batch statistics."""

    def __init__(self):
        self.models = {"net": nn.Conv2d(3, 3, 1)}

    def loss(self, phase, models, batch, step):
        out = models["net"](batch["image"])
        return (out.mean(dim=(1, 2, 3)) - 0.25).pow(2).mean(), {}

    def export(self, out_dir, models, ema):
        out_dir.mkdir(parents=True, exist_ok=True)


def _run(shards, tmp_path, **train_kw):
    torch.manual_seed(0)
    task = MeanRegression()
    cfg = TrainConfig(precision="fp32", lr=0.1, grad_clip=0, log_every=1, **train_kw)
    data = DataConfig(shards=[str(p) for p in sorted(shards.glob("*.tar"))], size=16, flip=False, num_workers=0,
                      shuffle_buffer=1, epoch_samples=10_000)
    result = train(task, cfg, data, tmp_path, distributed.setup("cpu"), quiet=True)
    return task.models["net"], result


def test_gradient_accumulation_equals_one_big_batch(digits_shards, tmp_path):
    big, _ = _run(digits_shards, tmp_path / "big", steps=3, batch_size=16)
    acc, _ = _run(digits_shards, tmp_path / "acc", steps=3, batch_size=8, grad_accum=2)
    for a, b in zip(big.parameters(), acc.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_only_the_last_checkpoints_are_kept(digits_shards, tmp_path):
    _run(digits_shards, tmp_path, steps=10, batch_size=4, ckpt_every=2, keep_ckpts=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "step_000008", "step_000010"]


def test_grad_checkpointing_needs_model_support(digits_shards, tmp_path):
    from ldmcli.errors import UserError

    with pytest.raises(UserError, match="activation checkpointing"):
        _run(digits_shards, tmp_path, steps=1, batch_size=4, grad_checkpointing=True)


@pytest.mark.slow
def test_compiled_model_trains_like_eager(digits_shards, tmp_path):
    eager, _ = _run(digits_shards, tmp_path / "eager", steps=3, batch_size=8)
    compiled, _ = _run(digits_shards, tmp_path / "compiled", steps=3, batch_size=8, compile=True)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
