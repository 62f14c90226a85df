"""How many training images per second the shard reader delivers, in the main process and with workers.

Builds random-ish 64x64 PNG shards in a temp dir (or reads `--shards`), then times TrainStream after a
warm-up that fills the shuffle buffers. Prints `name: value` lines last; never asserts on time.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from ldmcli.data.reader import TrainStream


def build_shards(out: Path, samples: int, shards: int, size: int) -> str:
    """Smooth gradients plus noise: compresses like photos rather than like pure noise or flat colour."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    per_shard = -(-samples // shards)
    for s in range(shards):
        with wds.TarWriter(str(out / f"bench-{s:06d}.tar")) as sink:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                a, b, c = rng.uniform(0, 255, 3)
                base = np.stack([a * xx, b * yy, c * (1 - xx) * yy], -1)
                pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "PNG")
                sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(i % 10)})
    return str(out / f"bench-{{000000..{shards - 1:06d}}}.tar")


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

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or build_shards(Path(tmp), args.samples, 4, args.size)
        figures = {
            f"reader_img_per_s_workers{w}": round(measure(shards, w, args.batch, args.size, args.seconds, args.warmup), 1)
            for w in args.workers
        }
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
