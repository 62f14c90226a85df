"""Atomic, resumable checkpoints.

Layout: checkpoints/step_XXXXXX/ with one safetensors file per model and per EMA, the optimisers'
state, each rank's RNG and data position, and state.json; `checkpoints/latest` names the newest one.
A checkpoint is written into a temp dir and renamed, and `latest` is replaced atomically after the
rename, so a kill at any moment leaves the previous checkpoint intact and `latest` never points to a
half-written dir.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ldmcli.errors import UserError
from ldmcli.train.distributed import DistEnv, barrier


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, version_inner, gauss = state["python"]
    random.setstate((version, tuple(version_inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pointer(ckpt_root: Path, name: str) -> None:
    tmp = ckpt_root / "latest.tmp"
    tmp.write_text(name + "\n")
    with open(tmp) as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, ckpt_root / "latest")
    _fsync_dir(ckpt_root)


def save_checkpoint(
    env: DistEnv,
    ckpt_root: Path,
    step: int,
    models: dict[str, nn.Module],
    ema: dict[str, nn.Module],
    optim_state: dict,
    state: dict,
    rank_state: dict,
    keep: int,
) -> Path:
    """Every rank calls this; rank 0 writes the shared parts and publishes the checkpoint."""
    final = ckpt_root / step_name(step)
    tmp = ckpt_root / f".tmp-{step_name(step)}"
    if env.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(env)
    try:
        torch.save(rank_state, tmp / f"rank{env.rank}.pt")
        barrier(env)
        if env.is_main:
            _write_and_publish(tmp, final, ckpt_root, models, ema, optim_state, state, keep)
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write checkpoint {final.name} in {ckpt_root} ({_why(err, ckpt_root)}); {_kept(ckpt_root)}") from None
    barrier(env)
    return final


def _why(err: Exception, ckpt_root: Path) -> str:
    """torch.save reports a full disk as 'unexpected pos'; say what a user can act on."""
    if getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(ckpt_root).free < 16 * 2**20:
        return "no space left on device"
    return str(err).strip().splitlines()[0]


def _kept(ckpt_root: Path) -> str:
    previous = latest_checkpoint(ckpt_root)
    return f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"


def _write_and_publish(tmp, final, ckpt_root, models, ema, optim_state, state, keep) -> None:
    """Fill the temp dir, make it durable, rename it into place, then move `latest` to it."""
    for name, module in models.items():
        save_model(module, str(tmp / f"model.{name}.safetensors"))
    for name, module in ema.items():
        save_model(module, str(tmp / f"ema.{name}.safetensors"))
    torch.save(optim_state, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _write_pointer(ckpt_root, final.name)
    _prune(ckpt_root, keep)


def _prune(ckpt_root: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise UserError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def load_checkpoint(
    env: DistEnv, path: Path, models: dict[str, nn.Module], ema: dict[str, nn.Module]
) -> tuple[dict, dict, dict]:
    """Load weights in place; return (optimiser state, shared state, this rank's state)."""
    for name, module in models.items():
        load_model(module, str(path / f"model.{name}.safetensors"), device=str(env.device))
    for name, module in ema.items():
        load_model(module, str(path / f"ema.{name}.safetensors"), device=str(env.device))
    optim_state = torch.load(path / "optim.pt", map_location=env.device, weights_only=True)
    state = json.loads((path / "state.json").read_text())
    rank_file = path / f"rank{env.rank}.pt"
    if state.get("world_size") != env.world_size or not rank_file.is_file():
        raise UserError(
            f"{path} was written by {state.get('world_size')} process(es); resume with the same number "
            f"(this run has {env.world_size})"
        )
    rank_state = torch.load(rank_file, weights_only=True)
    return optim_state, state, rank_state
