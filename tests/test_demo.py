"""`ldm demo --fast` end to end as a user runs it: every stage, the report, a rerun that skips finished
stages, and the report opened in headless Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT, run_ldm
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_ldm("demo", "--fast", "--out", out, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


@pytest.mark.slow
def test_fast_demo_runs_every_stage_and_writes_the_report(demo):
    out, result = demo
    state = json.loads((out / "demo.json").read_text())
    names = [s["name"] for s in state["stages"]]
    assert names == ["data", "data-info", "data-val", "train-ae", "recon", "encode", "train-ldm", "sample", "adherence"]
    assert all(s["status"] == "done" and s["command"].startswith("ldm ") for s in state["stages"])
    adherence = json.loads((out / "adherence.json").read_text())
    assert adherence["hold_out"] == ["purple triangle", "yellow square"]
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) >= 8 and all((out / src).is_file() for src in sources)
    for command in (s["command"] for s in state["stages"]):
        assert command.replace("&", "&amp;").replace("'", "&#x27;") in page
    assert "report.html" in result.stdout


@pytest.mark.slow
def test_rerunning_the_demo_skips_finished_stages(demo):
    out, _ = demo
    before = (out / "ldm" / "model" / "model.safetensors").stat().st_mtime_ns
    result = run_ldm("demo", "--fast", "--out", out, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads((out / "demo.json").read_text())
    assert all(s.get("skipped") for s in state["stages"])
    assert (out / "ldm" / "model" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_report_renders_in_headless_chromium(demo, tmp_path):
    out, _ = demo
    url = (out / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Prompt adherence" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    saturated = (pixels.max(-1) - pixels.min(-1)) > 80  # coloured shapes drawn by the images, not text
    assert saturated.mean() > 0.002


@pytest.mark.slow
def test_an_interrupted_training_stage_resumes_from_its_checkpoint(demo):
    out, _ = demo
    # as a kill in the middle of train-ldm leaves it: checkpoints, no model, the stage not recorded as done
    shutil.rmtree(out / "ldm" / "model")
    state = json.loads((out / "demo.json").read_text())
    names = [s["name"] for s in state["stages"]]
    state["stages"] = state["stages"][: names.index("train-ldm")]
    (out / "demo.json").write_text(json.dumps(state))
    result = run_ldm("demo", "--fast", "--out", out, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    stages = {s["name"]: s for s in json.loads((out / "demo.json").read_text())["stages"]}
    assert stages["train-ae"].get("skipped") and stages["encode"].get("skipped")
    assert not stages["train-ldm"].get("skipped") and not stages["adherence"].get("skipped")
    assert "--resume" in (out / "logs" / "train-ldm.log").read_text().splitlines()[0]
    assert (out / "ldm" / "model" / "model.safetensors").is_file()
