"""Pre-emption under torchrun: a SIGTERM that reaches one rank only still stops every rank at the same
step, with one checkpoint that holds each rank's state, and the job exits 0 (not a hang or a crash)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import TINY


def _rank_pids(pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    ranks = {}
    for child in children:
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{child}/environ").read_bytes().split(b"\0") if b"=" in kv)
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = child
    return ranks


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_one_step(digits_shards, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ldmcli",
           "train-classifier", str(digits_shards), "--out", str(run), *TINY, "--set", "train.steps=100000",
           "--set", "data.num_workers=0", "--set", "train.ckpt_every=5", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        latest, deadline = run / "checkpoints" / "latest", time.monotonic() + 120
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.kill(_rank_pids(proc.pid)[1], signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    final = run / "checkpoints" / latest.read_text().strip()
    step = json.loads((final / "state.json").read_text())["step"]
    assert f"stopped at step {step}" in out and step < 100000
    assert sorted(p.name for p in final.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
