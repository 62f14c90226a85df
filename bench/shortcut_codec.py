"""The residual shortcuts' codecs without any network: held-out images folded onto the latent grid (box
average) and brought back by each `model.shortcut_upsample`, next to bicubic down/up resampling. The untrained
shortcut autoencoder is exactly this codec, so these are its starting figures; nearest's high-frequency
energy is its block edges. Prints `name: value` lines last.

  python bench/shortcut_codec.py --val data/photos-val --json shortcut.json
"""

from __future__ import annotations

import argparse

import torch

from ldmcli.autoencoder.model import fold, unfold
from ldmcli.metrics.features import uint8_batches
from ldmcli.metrics.recon import ReconAccumulator, bicubic_roundtrip
from ldmcli.train.distributed import DistEnv
from report import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", required=True, help="held-out image shards")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--limit", type=int, default=1000, help="images to read")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    f = args.factor
    codecs = {"bicubic": lambda x: bicubic_roundtrip(x, f)}
    codecs |= {f"box_{mode}": (lambda x, mode=mode: unfold(fold(x, f, 3), f, 3, mode)) for mode in ("nearest", "bicubic")}
    accs = {name: ReconAccumulator(f, None) for name in codecs}
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    for batch in uint8_batches(args.val, 100, None, env, limit=args.limit):
        x = batch["image"].float() / 127.5 - 1
        for name, codec in codecs.items():
            accs[name].add(x, codec(x).clamp(-1, 1))
    figures = {"images": int(accs["bicubic"].sums["count"]), "factor": f}
    for name, acc in accs.items():
        figures |= {f"{name}_{k}": v for k, v in acc.result().items() if v is not None}
    report(figures, args.json)


if __name__ == "__main__":
    main()
