"""Checkpoints survive the faults of long runs on shared clusters: kills mid-write and full disks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli
from test_train import TINY, _recipe

from ldmcli.classifier import ClassifierTask
from ldmcli.errors import UserError
from ldmcli.train import distributed, train
from ldmcli.train.checkpoint import latest_checkpoint

SLOW_WRITES = (
    "import sys, time; import ldmcli.train.checkpoint as c; save = c.save_model; "
    "c.save_model = lambda *a, **k: (time.sleep(0.4), save(*a, **k)); "
    "from ldmcli.cli.main import run; sys.argv[0] = 'ldm'; run()"
)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(digits_shards, tmp_path):
    run = tmp_path / "run"
    args = ["train-classifier", digits_shards, "--out", run, *TINY, "--set", "train.steps=200", "--set", "train.ckpt_every=5",
            "--set", "train.ema_decay=0.9", "--set", "data.num_workers=0", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = run / "checkpoints" / ".tmp-step_000010"
    deadline = time.monotonic() + 120
    while not (partial / "model.classifier.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the second checkpoint was being written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    latest = latest_checkpoint(run / "checkpoints")
    assert latest.name == "step_000005"
    assert json.loads((latest / "state.json").read_text())["step"] == 5
    assert not (run / "checkpoints" / "step_000010").exists()
    result = run_cli("train-classifier", "--resume", run, "--set", "train.steps=12", "--quiet")
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(run / "checkpoints").name == "step_000012"
    assert not partial.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs just big enough for one checkpoint of the tiny model (root can mount; CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_previous_checkpoint(digits_shards, tmp_path, small_disk):
    recipe = _recipe(digits_shards, steps=8, ckpt_every=4, keep_ckpts=5)
    probe = tmp_path / "probe"
    train(ClassifierTask(recipe), recipe.train, recipe.data, probe, distributed.setup("cpu"), quiet=True)
    one = sum(f.stat().st_size for f in (probe / "checkpoints" / "step_000004").iterdir())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(one * 1.6) // 4096 * 4096 + 4096}", "tmpfs", str(small_disk)], check=True)
    with pytest.raises(UserError, match=r"step_000008 .*no space left on device.*step_000004 is intact"):
        train(ClassifierTask(recipe), recipe.train, recipe.data, small_disk / "run", distributed.setup("cpu"), quiet=True)
    ckpts = small_disk / "run" / "checkpoints"
    assert latest_checkpoint(ckpts).name == "step_000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000004"]


DIES_ON_RANK_1 = (
    "import os, signal, sys, threading\n"
    "if os.environ.get('RANK') == '1':\n"
    "    threading.Timer(float(os.environ['DIE_AFTER']), os.kill, (os.getpid(), signal.SIGKILL)).start()\n"
    "from ldmcli.cli.main import run; sys.argv[0] = 'ldm'; run()"
)


@pytest.mark.slow
def test_one_rank_dying_ends_the_job_instead_of_hanging(digits_shards, tmp_path):
    script = tmp_path / "dies.py"
    script.write_text(DIES_ON_RANK_1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train-classifier", str(digits_shards), "--out", str(run), *TINY, "--set", "train.steps=100000",
           "--set", "data.num_workers=0", "--quiet"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "DIE_AFTER": "8"})
    assert proc.returncode != 0
    assert time.monotonic() - start < 200
    assert "Signals.SIGKILL" in proc.stderr or "SIGKILL" in proc.stderr, proc.stderr[-2000:]
