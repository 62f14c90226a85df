"""bench/demo_steps.py builds the demo's two models from their recipes, so a recipe or model change that
breaks it would only show in `make bench`: run it once, at one timed step per layout."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_steps_times_both_layouts_and_profiles_each_step(tmp_path):
    out = tmp_path / "demo_steps.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "demo_steps.py"), "--repeats", "1", "--precision", "fp32", "--json", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    figures = json.loads(out.read_text())
    assert figures["precision"] == "fp32"
    for step in ("autoencoder", "latent"):
        nchw, cl = figures[f"{step}_nchw_ms"], figures[f"{step}_channels_last_ms"]
        assert nchw > 0 and cl > 0
        assert abs(figures[f"{step}_channels_last_speedup"] - nchw / cl) < 1e-6
        conv, matmul = figures[f"{step}_conv_share"], figures[f"{step}_matmul_share"]
        assert 0 < conv < 1 and 0 <= matmul < 1 and conv + matmul <= 1
        assert figures[f"{step}_conv_gflop_s"] > 0
