"""Soak: train a CPU digits recipe while SIGKILLing the whole process group at random moments, resuming
each time, the way a pre-empted cluster job lives. Then check what a user would: the run reached the
steps it was asked for, metrics.jsonl holds each logged step once, the loss is finite and falling, and
the model dir loads. Kills stop after --minutes; the last resume then runs to the end undisturbed.

Prints `name: value` lines last (and --json); logged_steps_lost_to_kills counts the logged steps past
the checkpoint each kill threw away. Never asserts on time; exits 1 when a check fails.
  OMP_NUM_THREADS=1 python bench/soak.py --minutes 30 --kill-every 180 --steps 3000
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import report

from ldmcli.train.progress import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def ldm(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m ldmcli ARGS` in its own session, so a kill reaches its data workers too."""
    return subprocess.Popen([sys.executable, "-m", "ldmcli", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def checkpoint_step(run: Path) -> int:
    """The step of the checkpoint `latest` names, 0 when there is none yet."""
    pointer = run / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[-1]) if pointer.is_file() else 0


def segment(command: list[str], seconds: float | None) -> tuple[str, str]:
    """Run one training process; SIGKILL its process group after `seconds` (None: let it finish)."""
    proc = ldm(*command)
    try:
        _, err = proc.communicate(timeout=seconds)
        return ("finished" if proc.returncode == 0 else f"failed ({proc.returncode})"), err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "killed", ""


def records(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl")


def check(run: Path, steps: int, log_every: int) -> dict:
    records_ = records(run)
    logged = [r["step"] for r in records_]
    expected = sorted({*range(log_every, steps + 1, log_every), steps})
    losses = [r["loss"] for r in records_]
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    loads = subprocess.run([sys.executable, "-c", "import sys; from ldmcli.diffusion.model import load; load(sys.argv[1])",
                            str(run / "model")], cwd=ROOT, capture_output=True).returncode == 0
    return {
        "steps_done": logged[-1] if logged else 0,
        "metrics_each_step_once": logged == expected,
        "loss_finite": all(math.isfinite(v) for v in losses),
        "loss_first_tenth": first,
        "loss_last_tenth": last,
        "loss_falling": last < first,
        "model_loads": loads,
        "skipped_samples": records_[-1].get("skipped_samples", 0) if records_ else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="kill and resume for this long")
    parser.add_argument("--kill-every", type=float, default=180.0, help="mean seconds between kills (uniform 0.5x-1.5x)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps the run is asked for")
    parser.add_argument("--recipe", default="recipes/dm-pixel-digits.toml")
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="more recipe overrides, e.g. train.batch_size=16")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--work", type=Path, help="keep data and run here (default: a temp dir)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ldm-soak-"))
    data, run = work / "data", work / "run"
    shutil.rmtree(run, ignore_errors=True)
    if not data.is_dir():
        subprocess.run([sys.executable, "-m", "ldmcli", "data", "build", "digits", "--out", str(data)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    sets = [f"train.steps={args.steps}", f"train.ckpt_every={args.ckpt_every}", f"train.log_every={args.log_every}",
            "train.sample_every=0", *args.set]
    fresh = ["train-diffusion", str(data), "--recipe", args.recipe, "--out", str(run), "--quiet", *(a for s in sets for a in ("--set", s))]
    rng = random.Random(args.seed)
    kills, restarts, lost, start = 0, 0, 0, time.monotonic()
    outcome = "killed"
    while outcome == "killed":
        kill_phase = time.monotonic() - start < args.minutes * 60
        resumable = checkpoint_step(run) > 0
        if not resumable:
            shutil.rmtree(run, ignore_errors=True)  # killed before its first checkpoint: start again
        command = ["train-diffusion", "--resume", str(run), "--quiet"] if resumable else fresh
        restarts += int(resumable)
        before = checkpoint_step(run)
        outcome, err = segment(command, rng.uniform(0.5, 1.5) * args.kill_every if kill_phase else None)
        if outcome == "killed":
            kills += 1
            reached = max([before, *(r["step"] for r in records(run))])
            lost += reached - checkpoint_step(run)
        print(f"[{time.monotonic() - start:7.1f}s] {outcome} at checkpoint step {checkpoint_step(run)}", flush=True)
    if outcome != "finished":
        print(err, file=sys.stderr)
        sys.exit(1)
    figures = {"steps_asked": args.steps, "kills": kills, "resumes": restarts, "logged_steps_lost_to_kills": lost,
               "wall_s": round(time.monotonic() - start, 1), **check(run, args.steps, args.log_every)}
    report(figures, args.json)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    checks = ("metrics_each_step_once", "loss_finite", "loss_falling", "model_loads")
    sys.exit(0 if figures["steps_done"] == args.steps and all(figures[c] for c in checks) else 1)


if __name__ == "__main__":
    main()
