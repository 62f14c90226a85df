"""Training through an autoencoder on the fly (--ae), with the encode cache (first_stage.cache_mb) and
without it, on the same images and steps: a super-resolution recipe by default, which must encode on the
fly since its input is made from each picture. A photos subset of --count crops makes a few epochs fit a
short run; the rate is the mean `img_per_s` of the run's last third of metrics.jsonl, once the cache has
seen most images (`hit_rate` says how far).

Prints `name: value` lines last (and --json); never asserts on time.
  OMP_NUM_THREADS=2 python bench/encode_cache.py --ae runs/c6-fm1-joint-s2/model --json encode_cache.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cli import ldm
from report import report


def last_third(run: Path, key: str) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tail = records[len(records) * 2 // 3:]
    return sum(r[key] for r in tail) / len(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae", type=Path, required=True, help="autoencoder model dir")
    parser.add_argument("--recipe", default="recipes/sr-photos-x4.toml")
    parser.add_argument("--count", type=int, default=1024, help="photo crops (twice as many distinct images with flips)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        ldm("data", "build", "photos", "--out", data, "--count", args.count, "--shard-size", args.count)
        common = ["--ae", args.ae, "--recipe", args.recipe, "--set", f"train.steps={args.steps}", "--set", "train.sample_every=1000000",
                  "--set", "train.ckpt_every=1000000", "--set", "data.shuffle_buffer=256", "--quiet"]
        figures = {"steps": args.steps, "distinct_images": 2 * args.count}
        for name, mb in (("uncached", 0), ("cached", 1024)):
            run = Path(tmp) / name
            ldm("train-diffusion", data, *common, "--set", f"first_stage.cache_mb={mb}", "--out", run)
            figures[f"{name}_img_s"] = last_third(run, "img_per_s")
            if mb:
                figures["hit_rate"] = last_third(run, "encode_cache_hits")
    figures["speedup"] = figures["cached_img_s"] / figures["uncached_img_s"]
    report(figures, args.json)


if __name__ == "__main__":
    main()
