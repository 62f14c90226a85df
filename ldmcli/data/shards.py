"""Writing WebDataset shards with identical bytes for identical samples.

Every stage that produces samples (data build, encode) writes through `ShardSink`, so all shards share
one layout: `NAME-000000.tar`, ..., members `KEY.SUFFIX` with fixed mtime/owner/mode, samples in the
order given. A shard is written as `NAME-XXXXXX.tar.tmp` and renamed when complete, so a crashed run
never leaves a half shard that looks finished.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ldmcli.errors import UserError

SHARD_PATTERN = "{name}-{index:06d}.tar"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_SUFFIX_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def check_name(name: str) -> str:
    """A shard set name must be a plain file name part: shards are `NAME-%06d.tar`."""
    if not _NAME_RE.match(name):
        raise UserError(f"'{name}' is not a usable shard name (letters, digits, '_', '-', '.', '+'); choose one with --name")
    return name


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes without metadata: same pixels give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_value(value: Any) -> bytes:
    """bytes as they are; str as UTF-8; int as its decimal text (the `cls` convention); dict/list as JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("booleans are ambiguous in a shard; store them inside `json`")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raise TypeError(f"cannot store a {type(value).__name__} in a shard")


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclass
class ShardStats:
    """What a sink wrote: sample count and the finished shard paths in order."""

    samples: int = 0
    shards: list[Path] = field(default_factory=list)


class ShardSink:
    """Write sample dicts into `out_dir/NAME-%06d.tar`, `shard_size` samples per shard.

    A sample is a dict of WebDataset suffix -> value (`png`, `txt`, `cls`, `json`, `latent.npy`, ...),
    values as `encode_value` accepts; `__key__` is optional and defaults to the running index as nine
    digits; other `__...__` entries (a reader's `__url__`) are not stored. Opening a sink removes earlier shards of the same name in `out_dir`, so a rebuild with fewer
    samples leaves no stale shards behind. Use as a context manager: on error the unfinished shard is
    deleted; finished ones stay.
    """

    def __init__(self, out_dir: Path | str, name: str, shard_size: int = 1000):
        if shard_size < 1:
            raise UserError(f"--shard-size must be at least 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.name = check_name(name)
        self.shard_size = shard_size
        self.stats = ShardStats()
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._in_shard = 0
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"--out {self.out_dir} exists and is not a folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar(\.tmp)?$")
        for path in self.out_dir.iterdir():
            if stale.match(path.name):
                path.unlink()

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def write(self, sample: dict[str, Any]) -> None:
        key = str(sample.get("__key__", f"{self.stats.samples:09d}"))
        if not key or "." in key or "/" in key:
            raise ValueError(f"bad sample key {key!r}: no dots or slashes, WebDataset splits on them")
        if self._tar is None:
            self._open()
        for suffix in sorted(k for k in sample if not k.startswith("__")):
            if not _SUFFIX_RE.match(suffix):
                raise ValueError(f"bad sample suffix {suffix!r}")
            data = encode_value(sample[suffix])
            self._tar.addfile(_member(f"{key}.{suffix}", len(data)), io.BytesIO(data))
        self.stats.samples += 1
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._finish()

    def close(self) -> ShardStats:
        if self._tar is not None:
            self._finish()
        return self.stats

    def _open(self) -> None:
        final = self.out_dir / SHARD_PATTERN.format(name=self.name, index=len(self.stats.shards))
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.GNU_FORMAT)
        self._in_shard = 0

    def _finish(self) -> None:
        self._tar.close()
        final = self._tmp.with_name(self._tmp.name.removesuffix(".tmp"))
        os.replace(self._tmp, final)
        self.stats.shards.append(final)
        self._tar = self._tmp = None

    def _abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._tmp = None


def write_shards(samples: Iterable[dict[str, Any]], out_dir: Path | str, name: str, shard_size: int = 1000) -> ShardStats:
    """Write all `samples` (see ShardSink) to `out_dir/NAME-%06d.tar`; return what was written."""
    with ShardSink(out_dir, name, shard_size) as sink:
        for sample in samples:
            sink.write(sample)
    return sink.stats

