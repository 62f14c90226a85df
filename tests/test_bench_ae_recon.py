"""bench/ae_recon.py gives the README's autoencoder rows: train a tiny recipe for a few steps through it and
check its figures, the same-numbers bicubic baseline included."""

import json
import subprocess
import sys
from pathlib import Path

from ae_fixtures import TINY_AE, blob_shards  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_ae_recon_reports_the_recipe_next_to_both_bicubic_baselines(blob_shards, tmp_path):  # noqa: F811
    out, sets = tmp_path / "recon.json", [a for a in TINY_AE if a != "--quiet"]
    sets += ["--set", "model.z_channels=6", "--set", "model.embed_dim=6", "--set", "train.steps=6", "--set", "loss.disc_start=100",
             "--set", "loss.feature_matching_start=100", "--set", "loss.spectral_windows=[8]"]
    subprocess.run([sys.executable, str(ROOT / "bench" / "ae_recon.py"), "--recipe", str(ROOT / "recipes" / "ae-kl-f4-photos.toml"),
                    "--train", str(blob_shards), "--val", str(blob_shards), "--out", str(tmp_path / "run"), "--size", "32",
                    "--json", str(out), *sets], check=True, capture_output=True, cwd=tmp_path)
    figures = json.loads(out.read_text())
    assert figures["steps"] == 6 and figures["images"] == 40 and figures["factor"] == 2 and not figures["stopped_by_budget"]
    # 6 x 16 x 16 latent numbers ~ 3 x 23 x 23 pixels: more than the latent grid's 16 x 16 keeps.
    assert figures["latent_channels"] == 6 and figures["same_numbers_side"] == 23
    assert figures["bicubic_same_numbers_psnr"] > figures["bicubic_psnr"] and 10 < figures["psnr"] < 60
