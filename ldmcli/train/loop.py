"""The one training loop: any TrainTask, one process or many under torchrun."""

from __future__ import annotations

import contextlib
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ldmcli.config import DataConfig, TrainConfig
from ldmcli.data.reader import TrainStream, to_device
from ldmcli.errors import UserError
from ldmcli import precision
from ldmcli.images import save_grid
from ldmcli.train import checkpoint as ckpt
from ldmcli.train.distributed import DistEnv, all_max, all_sum
from ldmcli.train.ema import EMA
from ldmcli.train.optim import build_optimizer, lr_factor
from ldmcli.train.progress import MetricsLog, RunDisplay
from ldmcli.train.task import TrainTask


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    skipped_samples: int
    bad_steps: int
    model_dir: Path | None


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and exit cleanly."""

    def __init__(self):
        self.raised = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _prepare_modules(task: TrainTask, cfg: TrainConfig, env: DistEnv) -> dict[str, nn.Module]:
    trained = {m for p in task.phases() for m in p.modules}
    wrapped = {}
    for name, module in task.models.items():
        module.to(env.device)
        if cfg.grad_checkpointing:
            if not hasattr(module, "set_grad_checkpointing"):
                raise UserError(f"model '{name}' does not support activation checkpointing (train.grad_checkpointing)")
            module.set_grad_checkpointing(True)
        if cfg.compile:
            module.compile()
        if env.distributed and name in trained and any(p.requires_grad for p in module.parameters()):
            ids = [env.device.index] if env.device.type == "cuda" else None
            wrapped[name] = DDP(module, device_ids=ids)
        else:
            wrapped[name] = module
    return wrapped


def _view(task: TrainTask, wrapped: dict[str, nn.Module], trained: tuple[str, ...]) -> dict[str, nn.Module]:
    return {n: (wrapped[n] if n in trained else task.models[n]) for n in task.models}


def _set_trainable(task: TrainTask, trained: tuple[str, ...], base: dict[str, dict[str, bool]]) -> None:
    for name, module in task.models.items():
        for pname, p in module.named_parameters():
            p.requires_grad_(base[name][pname] and name in trained)


def train(
    task: TrainTask,
    cfg: TrainConfig,
    data: DataConfig,
    run_dir: Path,
    env: DistEnv,
    resume: bool = False,
    quiet: bool = False,
    title: str = "train",
) -> TrainResult:
    """Run `task` until cfg.steps, checkpointing into run_dir; returns where it stopped."""
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    phases = task.phases()
    base_trainable = {n: {pn: p.requires_grad for pn, p in m.named_parameters()} for n, m in task.models.items()}
    wrapped = _prepare_modules(task, cfg, env)
    optimizers = {p.name: build_optimizer(cfg, p, task.models) for p in phases}
    schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(cfg, s)) for n, o in optimizers.items()}
    emas = {n: EMA(task.models[n], cfg.ema_decay, cfg.ema_warmup) for n in task.ema_modules()} if cfg.ema_decay > 0 else {}

    step, bad_total, skipped = 0, 0, 0
    stream_state = None
    torch.manual_seed(cfg.seed * 1000 + env.rank)
    if resume:
        path = ckpt.latest_checkpoint(ckpt_root)
        if path is None:
            raise UserError(f"nothing to resume in {run_dir}: no checkpoints/latest")
        optim_state, state, rank_state = ckpt.load_checkpoint(env, path, task.models, {n: e.module for n, e in emas.items()})
        for name, opt in optimizers.items():
            opt.load_state_dict(optim_state[name]["optimizer"])
            schedulers[name].load_state_dict(optim_state[name]["scheduler"])
        for name, e in emas.items():
            e.num_updates = state["ema_updates"][name]
        step, bad_total, skipped = state["step"], state["bad_steps"], state["skipped_samples"]
        stream_state = rank_state["data"]
        ckpt.set_rng_state(rank_state["rng"], env.device)

    stream = TrainStream(
        data.shards,
        batch_size=cfg.batch_size,
        size=data.size,
        crop=data.crop,
        flip=data.flip,
        rotate=data.rotate,
        seed=cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
        num_workers=data.num_workers,
        shuffle_buffer=data.shuffle_buffer,
        epoch_samples=data.epoch_samples,
        required=task.required_keys,
        latent_shape=task.latent_shape,
        pin_memory=env.device.type == "cuda",
        state=stream_state,
    )
    batches = iter(stream)
    autocast = precision.autocast(env.device, precision.resolve(cfg.precision, env.device, "train.precision"))
    metrics = MetricsLog(run_dir / "metrics.jsonl", env.is_main, step if resume else None)
    display = RunDisplay(cfg.steps, step, env.is_main, quiet, title)
    preview_batch = None

    def save(at: int) -> None:
        optim_state = {n: {"optimizer": o.state_dict(), "scheduler": schedulers[n].state_dict()} for n, o in optimizers.items()}
        state = {
            "step": at,
            "bad_steps": bad_total,
            "skipped_samples": skipped,
            "world_size": env.world_size,
            "ema_updates": {n: e.num_updates for n, e in emas.items()},
        }
        rank_state = {"rng": ckpt.rng_state(env.device), "data": stream.state_dict()}
        ckpt.save_checkpoint(env, ckpt_root, at, task.models, {n: e.module for n, e in emas.items()}, optim_state, state, rank_state, cfg.keep_ckpts)

    def preview(at: int) -> None:
        if not env.is_main or preview_batch is None:
            return
        view = {n: (emas[n].module if n in emas else m) for n, m in task.models.items()}
        for m in view.values():
            m.eval()
        with torch.no_grad(), autocast:
            images = task.preview(view, preview_batch, at)
        for m in task.models.values():
            m.train()
        if images is not None:
            save_grid(images, run_dir / "samples" / f"{ckpt.step_name(at)}.png", task.preview_nrow)

    sums: dict[str, float] = defaultdict(float)
    count, consecutive_bad = 0, 0
    interval_start, interval_images = time.monotonic(), 0
    interrupted = False
    switching = len(phases) > 1  # one phase trains the same parameters every step: set them once
    if not switching:
        _set_trainable(task, phases[0].modules, base_trainable)
    with _StopFlag() as stop:
        for m in task.models.values():
            m.train()
        while step < cfg.steps:
            micro = [to_device(next(batches), env.device) for _ in range(cfg.grad_accum)]
            if preview_batch is None:
                preview_batch = micro[0]
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            logs: dict[str, float] = defaultdict(float)
            finite = True
            for k, batch in enumerate(micro):
                last = k == len(micro) - 1
                for phase in phases:
                    if switching:
                        _set_trainable(task, phase.modules, base_trainable)
                    view = _view(task, wrapped, phase.modules)
                    syncs = [view[n].no_sync() for n in phase.modules if isinstance(view[n], DDP) and not last]
                    with contextlib.ExitStack() as stack:
                        for s in syncs:
                            stack.enter_context(s)
                        with autocast:
                            loss, terms = task.loss(phase.name, view, batch, step)
                        (loss / len(micro)).backward()
                    value = float(loss.detach())
                    finite &= bool(torch.isfinite(torch.tensor(value)))
                    key = "loss" if len(phases) == 1 else f"loss_{phase.name}"
                    logs[key] += value / len(micro)
                    for t, v in terms.items():
                        logs[t] += float(v) / len(micro)
            if switching:
                _set_trainable(task, tuple(task.models), base_trainable)
            norms = {}
            for phase in phases:
                params = [p for n in phase.modules for p in task.models[n].parameters() if p.grad is not None]
                if cfg.grad_clip > 0 and params:
                    norms[phase.name] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            finite &= all(torch.isfinite(torch.tensor(v)) for v in norms.values())
            bad = all_max(env, [0.0 if finite else 1.0])[0] > 0
            batch_skipped = int(all_sum(env, [float(sum(b["n_skipped"] for b in micro))])[0])
            skipped += batch_skipped
            if bad:
                bad_total += 1
                consecutive_bad += 1
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                if consecutive_bad > cfg.max_bad_steps:
                    display.close()
                    raise UserError(
                        f"training diverged: {consecutive_bad} steps in a row had a non-finite loss or gradient "
                        f"at step {step}; the last good checkpoint is kept in {ckpt_root}"
                    )
                if all_max(env, [1.0 if stop.raised else 0.0])[0] > 0:  # a stop asked during a skipped step
                    save(step)
                    interrupted = True
                    break
                continue
            consecutive_bad = 0
            for name, opt in optimizers.items():
                opt.step()
                schedulers[name].step()
            for name, e in emas.items():
                e.update(task.models[name])
            step += 1
            for t, v in logs.items():
                sums[t] += v
            for n, v in norms.items():
                sums[f"grad_norm_{n}" if len(phases) > 1 else "grad_norm"] += v
            count += 1
            interval_images += cfg.batch_size * cfg.grad_accum * env.world_size
            record = None
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.monotonic() - interval_start
                record = {"step": step, **{k: v / count for k, v in sums.items()}}
                record["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
                record["img_per_s"] = interval_images / max(elapsed, 1e-9)
                record["skipped_samples"] = skipped
                record["bad_steps"] = bad_total
                metrics.write(record)
                sums.clear()
                count, interval_images, interval_start = 0, 0, time.monotonic()
            display.update(step, record)
            if cfg.sample_every and step % cfg.sample_every == 0:
                preview(step)
            stop_now = all_max(env, [1.0 if stop.raised else 0.0])[0] > 0
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps or stop_now:
                save(step)
            if stop_now:
                interrupted = True
                break
    display.close()
    _set_trainable(task, tuple(task.models), base_trainable)
    model_dir = None
    if not interrupted:
        if cfg.sample_every:
            preview(step)
        if env.is_main:
            model_dir = run_dir / "model"
            task.export(model_dir, task.models, {n: e.module for n, e in emas.items()})
    if env.is_main:
        if skipped:
            display.message(f"skipped {skipped} corrupt or incomplete samples")
        if bad_total:
            display.message(f"skipped {bad_total} steps with a non-finite loss or gradient")
    return TrainResult(step, interrupted, skipped, bad_total, model_dir)

