"""Train an autoencoder recipe for a wall-clock budget, then `ldm eval --recon` it on held-out shards.

The run gets SIGTERM when the budget is spent; the loop checkpoints and stops, and the EMA weights of
that checkpoint (or the finished model dir) are evaluated next to bicubic resampling at the same
latent size, and next to bicubic through an RGB image that holds as many numbers as the latent (the
same grid when the latent has 3 channels; 23 px for 6 x 16 x 16). Figures are printed last as
`name: value` lines.

  python bench/ae_recon.py --recipe recipes/ae-kl-f4-photos.toml --train data/photos --val data/photos-val \
      --minutes 20 --out runs/bench-kl-f4 --json kl-f4.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ldmcli.metrics.recon import same_numbers_side
from report import report


def model_dir_from_checkpoint(run: Path) -> tuple[Path, int]:
    """The finished model dir, or one assembled from the latest checkpoint (EMA weights when kept)."""
    if (run / "model" / "model.safetensors").is_file():
        return run / "model", json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    out = run / "budget-model"
    out.mkdir(exist_ok=True)
    recipe = json.loads((run / "config.json").read_text())
    payload = {"kind": "autoencoder", "format_version": recipe["format_version"], "config": recipe["config"]["model"]}
    (out / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
    shutil.copy(ckpt / "model.autoencoder.safetensors", out / "model.safetensors")
    if (ckpt / "ema.autoencoder.safetensors").is_file():
        shutil.copy(ckpt / "ema.autoencoder.safetensors", out / "ema.safetensors")
    return out, json.loads((ckpt / "state.json").read_text())["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--train", required=True, help="training image shards")
    parser.add_argument("--val", required=True, help="held-out image shards")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--out", required=True, help="run dir (must not exist)")
    parser.add_argument("--set", action="append", default=[], help="recipe override, as for ldm train-ae")
    parser.add_argument("--size", type=int, default=64, help="evaluation image size")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    run = Path(args.out)
    cmd = [sys.executable, "-m", "ldmcli", "train-ae", args.train, "--recipe", args.recipe, "--out", str(run), "--quiet"]
    for s in args.set:
        cmd += ["--set", s]
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=args.minutes * 60)
        stopped = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        stopped = True
    minutes = (time.monotonic() - start) / 60
    if proc.returncode not in (0, -signal.SIGTERM):
        sys.exit(f"training failed with exit code {proc.returncode}")
    model, step = model_dir_from_checkpoint(run)
    recon_json = run / "recon.json"
    subprocess.run([sys.executable, "-m", "ldmcli", "eval", args.val, "--recon", "--ae", str(model), "--size", str(args.size),
                    "--json", str(recon_json), "--save", str(run / "recon")], check=True)
    figures = json.loads(recon_json.read_text())
    result = {"recipe": args.recipe, "train_minutes": round(minutes, 2), "budget_minutes": args.minutes, "stopped_by_budget": stopped,
              "steps": step, **{k: figures[k] for k in ("images", "factor", "psnr", "bicubic_psnr", "ssim", "bicubic_ssim", "hf_ratio", "bicubic_hf_ratio", "lpips",
                                          "latent_channels", "bicubic_same_numbers_psnr", "bicubic_same_numbers_ssim",
                                          "bicubic_same_numbers_hf_ratio")}}
    result["same_numbers_side"] = same_numbers_side(args.size, figures["factor"], figures["latent_channels"])
    report(result, args.json)


if __name__ == "__main__":
    main()
