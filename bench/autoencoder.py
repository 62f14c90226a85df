"""Encode/decode throughput (images/s) of an ldmcli autoencoder and of diffusers' AutoencoderKL with the
same channel configuration, in bf16 autocast and fp32 (fp32 alone where bf16 is not native, unless
`--precisions both`), measured in the same process and alternated.

  python bench/autoencoder.py --recipe recipes/ae-kl-f4-photos.toml --size 64 --batch 16 --json tp.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ldmcli import allocator
from ldmcli.autoencoder.config import AutoencoderRecipe
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.config import load_recipe
from ldmcli.interop.autoencoder import config_to_diffusers
from report import report
from timing import add_precision_option, alternated_rates, precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/ae-kl-f4-photos.toml")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the fastest counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_precision_option(parser)
    parser.add_argument("--json")
    args = parser.parse_args()
    allocator.configure()  # malloc as `ldm` sets it (LDM_MALLOC=system: glibc's defaults)
    device = torch.device(args.device)

    from diffusers import AutoencoderKL

    cfg = load_recipe(AutoencoderRecipe, Path(args.recipe)).model
    if cfg.bottleneck != "kl" or cfg.attn_factors:
        raise SystemExit("the comparison needs a KL recipe without block attention (diffusers' AutoencoderKL layout)")
    ours = Autoencoder(cfg).eval().to(device)
    dcfg = {k: v for k, v in config_to_diffusers(cfg).items() if not k.startswith("_")}
    theirs = AutoencoderKL(**dcfg).eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x)
    result = {"size": args.size, "batch": args.batch, "threads": torch.get_num_threads(), "device": str(device)}
    timed = precisions(args.precisions, device)
    for precision in timed:
        enc = alternated_rates([ours.encode, lambda t: theirs.encode(t).latent_dist.mean], x, precision, args.repeats)
        dec = alternated_rates([ours.decode, lambda t: theirs.decode(t).sample], z, precision, args.repeats)
        result[f"ldmcli_encode_{precision}"], result[f"diffusers_encode_{precision}"] = enc
        result[f"ldmcli_decode_{precision}"], result[f"diffusers_decode_{precision}"] = dec
    for what in ("encode", "decode"):
        for precision in timed:
            result[f"ratio_{what}_{precision}"] = result[f"ldmcli_{what}_{precision}"] / result[f"diffusers_{what}_{precision}"]
    report(result, args.json)


if __name__ == "__main__":
    main()
