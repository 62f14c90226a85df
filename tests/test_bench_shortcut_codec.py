"""bench/shortcut_codec.py gives the README's starting figures of the shortcut autoencoders: run it on small
shards and check the relations those figures rest on."""

import json
import subprocess
import sys
from pathlib import Path

from ae_fixtures import blob_shards  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def test_box_bicubic_codec_is_near_bicubic_and_nearest_adds_block_edges(blob_shards, tmp_path):  # noqa: F811
    out = tmp_path / "codec.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "shortcut_codec.py"), "--val", str(blob_shards), "--factor", "2",
                    "--limit", "32", "--json", str(out)], check=True, capture_output=True, cwd=tmp_path)
    figures = json.loads(out.read_text())
    assert figures["images"] == 32 and figures["factor"] == 2
    assert abs(figures["box_bicubic_psnr"] - figures["bicubic_psnr"]) < 2.0
    assert figures["box_nearest_psnr"] < figures["box_bicubic_psnr"]
    assert figures["box_nearest_hf_ratio"] > figures["box_bicubic_hf_ratio"]
