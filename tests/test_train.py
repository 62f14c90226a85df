"""The one training loop, driven through `ldm train-classifier` on a model of a few thousand weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from ldmcli.classifier import ClassifierRecipe, ClassifierTask
from ldmcli.config import from_dict
from ldmcli.errors import UserError
from ldmcli.train import distributed, train

TINY = [
    "--set", "model.channels=8", "--set", "model.stages=2", "--set", "data.size=16", "--set", "data.flip=false",
    "--set", "train.batch_size=16", "--set", "train.lr=1e-2", "--set", "train.log_every=5",
    "--set", "data.shuffle_buffer=64", "--set", "data.epoch_samples=200",
]


def records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(str(path))


def test_loss_goes_down_and_model_dir_is_written(digits_shards, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train-classifier", digits_shards, "--out", run, *TINY, "--set", "train.steps=150",
                     "--set", "train.ema_decay=0.99", "--set", "data.num_workers=0", "--quiet")
    assert result.exit_code == 0, result.output
    recs = records(run)
    n_params = sum(t.numel() for t in weights(run / "model" / "model.safetensors").values())
    assert n_params < 5000
    assert recs[0]["loss"] > 2.0 and recs[-1]["loss"] < 0.6 * recs[0]["loss"], [r["loss"] for r in recs]
    assert {"step", "loss", "lr", "img_per_s", "skipped_samples", "accuracy"} <= set(recs[-1])
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    assert json.loads((run / "config.json").read_text())["config"]["train"]["steps"] == 150
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000150"


def _start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ldmcli", *map(str, args)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_after_first_checkpoint(args, run, sig):
    proc = _start(args)
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, sig)  # the whole process group, DataLoader workers included, as a scheduler does
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.slow
def test_kill_or_terminate_then_resume_equals_an_uninterrupted_run(digits_shards, tmp_path):
    args = [*TINY, "--set", "train.steps=300", "--set", "train.ckpt_every=20", "--set", "train.precision=fp32",
            "--set", "train.ema_decay=0.99", "--set", "data.num_workers=2", "--set", "train.lr_schedule=cosine",
            "--set", "data.flip=true", "--set", "model.dropout=0.2",
            "--set", "train.warmup_steps=10", "--quiet"]
    whole = tmp_path / "whole"
    assert run_cli("train-classifier", digits_shards, "--out", whole, *args).exit_code == 0

    killed = tmp_path / "killed"
    code, _, _ = _interrupt_after_first_checkpoint(["train-classifier", digits_shards, "--out", killed, *args], killed, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (killed / "model").exists()
    assert run_cli("train-classifier", "--resume", killed, "--quiet").exit_code == 0

    termed = tmp_path / "termed"
    code, out, _ = _interrupt_after_first_checkpoint(["train-classifier", digits_shards, "--out", termed, *args], termed, signal.SIGTERM)
    assert code == 0 and "--resume" in out
    stopped = json.loads(((termed / "checkpoints") / (termed / "checkpoints" / "latest").read_text().strip() / "state.json").read_text())["step"]
    assert 0 < stopped < 300
    assert run_cli("train-classifier", "--resume", termed, "--quiet").exit_code == 0

    for name in ("model.safetensors", "ema.safetensors"):
        ref = weights(whole / "model" / name)
        for other in (killed, termed):
            got = weights(other / "model" / name)
            assert ref.keys() == got.keys()
            assert all(torch.equal(ref[k], got[k]) for k in ref), f"{other.name}/{name} differs"
    assert [r["step"] for r in records(killed)] == [r["step"] for r in records(whole)]


@pytest.mark.slow
def test_two_processes_under_torchrun(digits_shards, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ldmcli",
           "train-classifier", str(digits_shards), "--out", str(run), *TINY, "--set", "train.steps=30",
           "--set", "data.num_workers=1", "--set", "train.ckpt_every=10", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints" / "step_000030").glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    recs = records(run)
    assert recs[-1]["step"] == 30 and recs[-1]["loss"] < recs[0]["loss"]


class NanTask(ClassifierTask):
    """Returns a NaN loss on chosen steps, as a diverging model would."""

    def __init__(self, recipe, nan_steps):
        super().__init__(recipe)
        self.nan_steps = nan_steps
        self.calls = 0

    def loss(self, phase, models, batch, step):
        loss, logs = super().loss(phase, models, batch, step)
        self.calls += 1
        if self.calls in self.nan_steps:
            loss = loss * float("nan")
        return loss, logs


def _recipe(shards, **train):
    return from_dict(ClassifierRecipe, {
        "model": {"channels": 8, "stages": 2},
        "data": {"shards": [str(s) for s in sorted(shards.glob("*.tar"))], "size": 16, "num_workers": 0},
        "train": {"steps": 12, "batch_size": 8, "log_every": 4, "ckpt_every": 4, **train},
    })


def test_non_finite_step_is_skipped_and_counted(digits_shards, tmp_path):
    recipe = _recipe(digits_shards)
    env = distributed.setup("cpu")
    result = train(NanTask(recipe, {3, 7}), recipe.train, recipe.data, tmp_path, env, quiet=True)
    assert result.step == 12 and result.bad_steps == 2
    assert records(tmp_path)[-1]["bad_steps"] == 2
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "model" / "model.safetensors").values())


class TermDuringNanTask(NanTask):
    """SIGTERMs its own process during a step whose loss is NaN, as a pre-emption could land."""

    def loss(self, phase, models, batch, step):
        loss, logs = super().loss(phase, models, batch, step)
        if self.calls in self.nan_steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss, logs


def test_a_stop_during_a_skipped_step_still_checkpoints_and_stops(digits_shards, tmp_path):
    recipe = _recipe(digits_shards)
    env = distributed.setup("cpu")
    result = train(TermDuringNanTask(recipe, {6}), recipe.train, recipe.data, tmp_path, env, quiet=True)
    assert result.interrupted and result.step == 5 and result.bad_steps == 1
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000005"


def test_too_many_bad_steps_in_a_row_stop_the_run_and_keep_the_last_checkpoint(digits_shards, tmp_path):
    recipe = _recipe(digits_shards, max_bad_steps=3)
    env = distributed.setup("cpu")
    with pytest.raises(UserError, match="diverged"):
        train(NanTask(recipe, set(range(6, 100))), recipe.train, recipe.data, tmp_path, env, quiet=True)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000004"
    assert not (tmp_path / "model").exists()


def test_resume_requires_a_run_and_refuses_an_existing_one(digits_shards, tmp_path):
    result = run_cli("train-classifier", "--resume", tmp_path / "nothing")
    assert result.exit_code == 2 and "config.json" in result.output
    run = tmp_path / "r"
    assert run_cli("train-classifier", digits_shards, "--out", run, *TINY, "--set", "train.steps=2", "--quiet").exit_code == 0
    again = run_cli("train-classifier", digits_shards, "--out", run, *TINY)
    assert again.exit_code == 2 and "--resume" in again.output
