"""How many training images per second the shard reader delivers, in the main process and with workers.

Builds the built-in photos at 64x64 in a temp dir (or reads `--shards`), then times TrainStream after a
warm-up that fills the shuffle buffers. Prints `name: value` lines last; never asserts on time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ldmcli import allocator
from ldmcli.data.builtin import builtin_samples
from ldmcli.data.reader import TrainStream
from ldmcli.data.shards import write_shards
from report import report


def build_shards(out: Path, samples: int, size: int) -> str:
    """The built-in photos at `size`, as `ldm data build photos` writes them."""
    items, _, _ = builtin_samples("photos", size=size, count=samples, seed=0)
    stats = write_shards(items, out, "photos", shard_size=-(-samples // 4))
    return str(out / f"photos-{{000000..{len(stats.shards) - 1:06d}}}.tar")


def measure(shards: str, workers: int, batch: int, size: int, seconds: float, warmup: int) -> float:
    stream = TrainStream([shards], batch_size=batch, size=size, num_workers=workers, shuffle_buffer=500, epoch_samples=5000)
    batches = iter(stream)
    for _ in range(warmup):
        next(batches)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += len(next(batches)["__key__"])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", help="shard pattern to read instead of building temporary shards")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=5, help="batches before timing starts")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or build_shards(Path(tmp), args.samples, args.size)
        figures = {
            f"reader_img_per_s_workers{w}": round(measure(shards, w, args.batch, args.size, args.seconds, args.warmup), 1)
            for w in args.workers
        }
    report(figures, args.json)


if __name__ == "__main__":
    main()
