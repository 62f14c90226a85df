"""The worker side of the reader: raw samples from shards, epochs, shuffling, decoding, batching.

WebDataset opens the URLs (`gopen`, so `pipe:` works) and parses the tars (`tar_file_iterator`,
`group_by_keys`); the composition is ours because exact resume needs to know, for every batch, how many
shuffled samples of which epoch it has consumed, and because every failure must be counted exactly
once. Everything random is seeded from (seed, rank, stream, epoch[, sample]) through sha256, so a
stream can be replayed from any position without saving buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from ldmcli.data.decode import CorruptSample, collate, decode_sample
from ldmcli.errors import UserError

log = logging.getLogger("ldmcli.data")

MAX_BAD_RUN = 10_000
_WARN_LIMIT = 10


class NoReadableSample(Exception):
    """Nothing usable can come out of the shards; becomes a UserError in the main process."""


def derive_seed(*parts: object) -> int:
    """A 64-bit seed that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def describe(urls: Sequence[str]) -> str:
    return urls[0] if len(urls) == 1 else f"{urls[0]} and {len(urls) - 1} more shards"


class Tally:
    """Skipped samples of one worker since its last batch, with the first few logged."""

    def __init__(self) -> None:
        self.pending = 0
        self.warned = 0
        self.last: object = None

    def skip(self, what: str, why: object) -> None:
        self.pending += 1
        self.last = why
        if self.warned < _WARN_LIMIT:
            self.warned += 1
            more = " (further skips are counted, not logged)" if self.warned == _WARN_LIMIT else ""
            log.warning("skipped %s: %s%s", what, why, more)

    def take(self) -> int:
        count, self.pending = self.pending, 0
        return count


def _members(stream, url: str, failure: list, on_duplicate: Callable[[str], None]) -> Iterator[dict]:
    """Tar members until the end or the first read error, which lands in `failure` with the name of
    the member being read (seen through select_files) so that its partial sample can be dropped.
    A file name seen before in the shard is not read: the first one wins and `on_duplicate` hears of it."""
    reading: list[str] = []
    seen: set[str] = set()

    def select(name: str) -> bool:
        if name in seen:
            on_duplicate(name)
            return False
        seen.add(name)
        reading[:] = [name]
        return True

    try:
        for member in tar_file_iterator(stream, select_files=select):
            yield {**member, "__url__": url}
    except Exception as exn:
        failure.append((exn, base_plus_ext(reading[0])[0] if reading else None))


def shard_samples(url: str, tally: Tally, count_errors: bool = True) -> Iterator[dict]:
    """Raw samples of one shard. An unopenable or truncated shard counts as one skip: the samples
    read in full before the damage are kept, the one being read is dropped. A duplicate file name is
    one skip (webdataset would end the shard there)."""
    failure: list = []

    def on_duplicate(name: str) -> None:
        if count_errors:
            tally.skip(f"{url}:{name}", "duplicate file name in the shard; the first one is used")

    try:
        stream = gopen(url, "rb")
    except Exception as exn:
        failure.append((exn, None))
    else:
        try:
            for sample in group_by_keys(_members(stream, url, failure, on_duplicate)):
                if not failure or sample["__key__"] != failure[0][1]:
                    yield sample
        except Exception as exn:
            failure.append((exn, None))
        finally:
            with contextlib.suppress(Exception):
                stream.close()
    if failure and count_errors:
        tally.skip(url, failure[0][0])


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to produce batches; plain data so that it pickles to any start method."""

    urls: tuple[str, ...]
    batch_size: int
    size: int | None
    crop: str
    flip: bool
    required: tuple[str, ...]
    seed: int = 0
    rank: int = 0
    shuffle_buffer: int = 0
    epoch_samples: int = 1
    latent_shape: tuple[int, ...] | None = None
    rotate: bool = False


def resampled(spec: StreamSpec, stream: int, epoch: int, tally: Tally) -> Iterator[dict]:
    """`epoch_samples` raw samples from shards drawn with replacement; fails if every shard gives nothing."""
    rng = random.Random(derive_seed(spec.seed, "shards", spec.rank, stream, epoch))
    count, empty = 0, set()
    while count < spec.epoch_samples:
        url = spec.urls[rng.randrange(len(spec.urls))]
        got = 0
        with contextlib.closing(shard_samples(url, tally)) as samples:
            for sample in samples:
                yield sample
                count, got = count + 1, got + 1
                if count == spec.epoch_samples:
                    return
        empty = set() if got else empty | {url}
        if len(empty) == len(spec.urls):
            raise NoReadableSample(
                f"no readable sample in {describe(spec.urls)}: every shard is empty or unreadable (last error: {tally.last})"
            )


def shuffled(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer that starts empty and drains at the end, so an epoch is self-contained."""
    if bufsize <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < bufsize:
            buffer.append(sample)
            continue
        k = rng.randrange(bufsize)
        yield buffer[k]
        buffer[k] = sample
    rng.shuffle(buffer)
    yield from buffer


def train_batches(spec: StreamSpec, stream: int, epoch: int, consumed: int) -> Iterator[dict]:
    """Logical stream `stream` forever, starting after `consumed` shuffled samples of `epoch`.

    Samples before the start are read but not decoded, and skips met while replaying them are dropped,
    so the batches are bitwise those an uninterrupted stream yields. Each batch carries
    `__pos__` = [stream, epoch, consumed] right after its last sample.
    """
    tally, good, bad_run, any_good = Tally(), [], 0, False
    limit = min(MAX_BAD_RUN, spec.epoch_samples)
    while True:
        shuffle_rng = random.Random(derive_seed(spec.seed, "shuffle", spec.rank, stream, epoch))
        for k, raw in enumerate(shuffled(resampled(spec, stream, epoch, tally), spec.shuffle_buffer, shuffle_rng)):
            if k < consumed:
                if k == consumed - 1:
                    tally.take()
                continue
            aug = random.Random(derive_seed(spec.seed, "augment", spec.rank, stream, epoch, k))
            try:
                good.append(decode_sample(raw, size=spec.size, crop=spec.crop, flip=spec.flip, rotate=spec.rotate, rng=aug,
                                          required=spec.required, latent_shape=spec.latent_shape))
            except CorruptSample as exn:
                tally.skip(f"{raw['__url__']}:{raw['__key__']}", exn)
                bad_run += 1
                if not any_good and bad_run >= limit:
                    raise NoReadableSample(
                        f"no readable sample in {describe(spec.urls)}: {bad_run} bad samples in a row, the last: {exn}"
                    ) from None
                continue
            any_good, bad_run = True, 0
            if len(good) == spec.batch_size:
                batch = collate(good)
                done = k + 1 == spec.epoch_samples
                batch["n_skipped"] = tally.take()
                batch["__pos__"] = [stream, epoch + 1, 0] if done else [stream, epoch, k + 1]
                good = []
                yield batch
        epoch, consumed = epoch + 1, 0


def eval_batches(spec: StreamSpec, consumer: int, consumers: int) -> Iterator[dict]:
    """This consumer's share of one ordered pass: whole shards when there are enough, else every
    `consumers`-th sample. A shard's read failure is counted by the one consumer it is assigned to.
    A final {"n_skipped": n, "__empty__": True} reports skips that no batch carried."""
    tally, good = Tally(), []
    by_shard = len(spec.urls) >= consumers
    urls = spec.urls[consumer::consumers] if by_shard else spec.urls
    index = 0
    for u, url in enumerate(urls):
        for raw in shard_samples(url, tally, count_errors=by_shard or u % consumers == consumer):
            mine = by_shard or index % consumers == consumer
            index += 1
            if not mine:
                continue
            try:
                good.append(decode_sample(raw, size=spec.size, crop=spec.crop, required=spec.required, latent_shape=spec.latent_shape))
            except CorruptSample as exn:
                tally.skip(f"{url}:{raw['__key__']}", exn)
                continue
            if len(good) == spec.batch_size:
                yield {**collate(good), "n_skipped": tally.take()}
                good = []
    if good:
        yield {**collate(good), "n_skipped": tally.take()}
    elif tally.pending:
        yield {"n_skipped": tally.take(), "__empty__": True}


def guarded(batches: Iterator[dict]) -> Iterator[dict]:
    """Turn errors a user can cause into an {"__error__": message} item: a worker's exception would
    otherwise reach the main process wrapped in a multi-line traceback."""
    try:
        yield from batches
    except (NoReadableSample, UserError) as exn:
        yield {"__error__": str(exn.format_message() if isinstance(exn, UserError) else exn)}
