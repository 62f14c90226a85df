"""One reader for training and evaluation over shard paths, globs, brace patterns and `pipe:` URLs.

Training streams forever and resumes bitwise from `state_dict()`; evaluation visits every sample exactly
once across DDP ranks and DataLoader workers. Batches are dicts: "image" (float32 Bx3xHxW in [-1, 1]),
"latent" (float32), "txt", "cls" (-1 when missing), "json", "__key__", and "n_skipped", the corrupt
samples the producing worker skipped since its previous batch, so that sums over batches are exact.

Resume: each (rank, logical stream j) is a chain of epochs seeded from (seed, rank, j, epoch). A batch
carries `__pos__` = [j, epoch, samples of the epoch consumed]; a restarted stream replays that epoch's
shard draws and shuffle without decoding up to the position. With W workers the DataLoader takes
batch b from worker b % W, so physical worker w serves logical stream (w + batches_so_far) % W and the
batch order after a resume is the uninterrupted one. A state whose world_size or num_workers differ
from the stream's cannot be replayed: the stream then logs a warning and starts fresh epochs beyond
every saved one (new data, not a repeat of the first steps).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import signal
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ldmcli.data.stream import StreamSpec, describe, eval_batches, guarded, train_batches
from ldmcli.errors import UserError

log = logging.getLogger("ldmcli.data")

STATE_VERSION = 1
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_MAGIC = re.compile(r"[*?[]")


def _local_shards(item: str) -> list[str]:
    path = Path(re.sub(r"^file:(//)?", "", item))
    if _MAGIC.search(str(path)):
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise UserError(f"no shard matches {item}")
        return [shard for match in matches for shard in _local_shards(match)]
    if path.is_dir():
        tars = sorted(str(p) for p in path.glob("*.tar"))
        if not tars:
            raise UserError(f"no *.tar shards in directory {item}")
        return tars
    if not path.exists():
        raise UserError(f"shard not found: {item}")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(f"shard is not a readable file: {item}")
    return [str(path)]


def resolve_shards(patterns: str | Sequence[str]) -> list[str]:
    """Paths, globs, brace patterns and directories to a list of shards; URLs (`pipe:`, `s3://`...) as they are."""
    if isinstance(patterns, str):
        patterns = [patterns]
    shards: list[str] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            if _URL.match(item) and not item.startswith("file:"):
                shards.append(item)
            else:
                shards.extend(_local_shards(item))
    if not shards:
        raise UserError("no data shards given")
    return shards


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the main process: a scheduler that signals the whole process
    group must get a checkpoint and a clean exit, not a 'worker killed by signal' crash."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _as_is(batch: dict) -> dict:
    """Batches leave the workers collated; DataLoader's default would walk every caption and json again."""
    return batch


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Tensors to `device` without blocking the host (they come from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _check(batch_size: int, size: int | None, crop: str) -> None:
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if size is not None and size < 1:
        raise UserError(f"image size must be at least 1, got {size}")
    if crop not in ("random", "center"):
        raise UserError(f"crop must be 'random' or 'center', got {crop!r}")


def _raise_error(batch: dict) -> None:
    if "__error__" in batch:
        raise UserError(batch["__error__"])


class _TrainDataset(IterableDataset):
    def __init__(self, spec: StreamSpec, positions: list[list[int]], offset: int) -> None:
        self.spec, self.positions, self.offset = spec, positions, offset

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        stream = ((info.id if info else 0) + self.offset) % len(self.positions)
        epoch, consumed = self.positions[stream]
        return guarded(train_batches(self.spec, stream, epoch, consumed))


class TrainStream:
    """Infinite, resumable training batches for one rank; iterate it, checkpoint `state_dict()`.

    `epoch_samples` is the length of one epoch of each logical stream (one per worker, per rank).
    A latent of another shape than `latent_shape` (when given) is skipped and counted.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch_size: int,
        size: int | None,
        crop: str = "random",
        flip: bool = True,
        rotate: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        epoch_samples: int = 20000,
        required: Sequence[str] = ("image",),
        latent_shape: Sequence[int] | None = None,
        pin_memory: bool = False,
        state: dict | None = None,
    ) -> None:
        _check(batch_size, size, crop)
        if rotate and size is None:
            raise UserError("data.rotate needs data.size: quarter turns of images of different shapes would not stack into a batch")
        if epoch_samples < 1:
            raise UserError(f"epoch_samples must be at least 1, got {epoch_samples}")
        self.spec = StreamSpec(
            tuple(resolve_shards(urls)), batch_size, size, crop, flip, tuple(required),
            seed, rank, shuffle_buffer, epoch_samples, tuple(latent_shape) if latent_shape else None, rotate=rotate,
        )
        self.world_size, self.num_workers, self.pin_memory = world_size, num_workers, pin_memory
        self.streams = max(1, num_workers)
        self.positions = [[0, 0] for _ in range(self.streams)]
        self.batches, self.skipped = 0, 0
        if state is not None:
            self._load(state)

    def _load(self, state: dict) -> None:
        try:
            version, streams = state["version"], state["streams"]
            saved = (state["world_size"], state["num_workers"])
            batches, skipped = int(state["batches"]), int(state["skipped"])
            positions = [[int(e), int(n)] for e, n in streams]
        except (KeyError, TypeError, ValueError):
            raise UserError("the checkpoint's data position is not one this ldmcli understands") from None
        if version != STATE_VERSION:
            raise UserError(f"the checkpoint's data position has version {version}; this ldmcli reads {STATE_VERSION}")
        self.skipped = skipped
        if saved == (self.world_size, self.num_workers) and len(positions) == self.streams:
            self.positions, self.batches = positions, batches
            return
        fresh = 1 + max(e for e, _ in positions)
        log.warning(
            "data stream saved with world_size=%d, num_workers=%d, resumed with %d, %d: it starts fresh at epoch %d, "
            "so this run is not bitwise the uninterrupted one",
            *saved, self.world_size, self.num_workers, fresh,
        )
        self.positions = [[fresh, 0] for _ in range(self.streams)]

    def state_dict(self) -> dict:
        """The position after the last batch yielded to the caller (prefetched batches are not counted)."""
        return {
            "version": STATE_VERSION,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batches": self.batches,
            "skipped": self.skipped,
            "streams": [list(p) for p in self.positions],
        }

    def __iter__(self) -> Iterator[dict]:
        dataset = _TrainDataset(self.spec, [list(p) for p in self.positions], self.batches % self.streams)
        # An own generator: DataLoader would otherwise draw its worker seed from the global RNG, which
        # the training step also uses (noise, dropout), and a resumed run would drift from the original.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            collate_fn=_as_is, generator=torch.Generator().manual_seed(0), worker_init_fn=_ignore_stop_signals)
        for batch in loader:
            _raise_error(batch)
            stream, epoch, consumed = batch["__pos__"]
            self.positions[stream] = [epoch, consumed]
            self.batches += 1
            self.skipped += batch["n_skipped"]
            yield batch


class _EvalDataset(IterableDataset):
    def __init__(self, spec: StreamSpec, world_size: int) -> None:
        self.spec, self.world_size = spec, world_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        consumer = self.spec.rank * workers + worker
        return guarded(eval_batches(self.spec, consumer, self.world_size * workers))


class EvalLoader:
    """One finite pass per iteration: this rank's share of every sample, exactly once; `skipped` counts
    the corrupt ones of the last pass. One batch is held back so that skips found after the last batch
    ride on it and the batches' n_skipped sum to `skipped`."""

    def __init__(self, spec: StreamSpec, world_size: int, num_workers: int) -> None:
        self.spec, self.world_size, self.num_workers = spec, world_size, num_workers
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(_EvalDataset(self.spec, self.world_size), batch_size=None, num_workers=self.num_workers,
                            collate_fn=_as_is, generator=torch.Generator().manual_seed(0), worker_init_fn=_ignore_stop_signals)
        self.skipped, held, pending = 0, None, 0
        for batch in loader:
            _raise_error(batch)
            self.skipped += batch["n_skipped"]
            if batch.get("__empty__"):
                if held is None:
                    pending += batch["n_skipped"]
                else:
                    held["n_skipped"] += batch["n_skipped"]
                continue
            batch["n_skipped"] += pending
            pending = 0
            if held is not None:
                yield held
            held = batch
        if held is None and (self.skipped or self.world_size == 1):
            raise UserError(f"no readable sample in {describe(self.spec.urls)} ({self.skipped} skipped)")
        if held is not None:
            yield held


def eval_loader(
    urls: str | Sequence[str],
    *,
    batch_size: int,
    size: int | None = None,
    crop: str = "center",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    required: Sequence[str] = ("image",),
    latent_shape: Sequence[int] | None = None,
) -> Iterable[dict]:
    """Finite batches of this rank's share of every sample; the last batch may be short."""
    _check(batch_size, size, crop)
    spec = StreamSpec(tuple(resolve_shards(urls)), batch_size, size, crop, False, tuple(required), rank=rank,
                      latent_shape=tuple(latent_shape) if latent_shape else None)
    return EvalLoader(spec, world_size, num_workers)
