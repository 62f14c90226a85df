"""The README's walkthrough, every command of its bash blocks in order, as a user pastes them, on a
small folder of captioned pictures, so that the README cannot drift from the tool.

Tiny settings, added the same way to every command of a kind: training commands run 2 steps of batch 4
without previews, samplers and upscaling 2 steps; the FID Inception is a random one under $TORCH_HOME.
"""

import re
import shlex

import numpy as np
import pytest
import torch
from conftest import ROOT, random_fid_inception, run_cli

from ldmcli.data.shapes import shape_scene

TINY_TRAIN = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.sample_every=0", "--set", "train.log_every=1"]


def walkthrough_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Walkthrough.*?(?=^## )", text, re.S | re.M)
    assert section, "README has no '## Walkthrough' section"
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section.group(0), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def tiny(words: list[str]) -> list[str]:
    assert words[0] == "ldm", f"the walkthrough runs ldm commands only: {shlex.join(words)}"
    args = words[1:]
    if args[0].startswith("train-"):
        return args + TINY_TRAIN
    if args[0] in ("sample", "upscale"):
        return args + ["--steps", "2"]
    return args


def pictures(folder, count, seed):
    """Captioned pictures as a user's folder holds them: NAME.png with NAME.txt beside it."""
    folder.mkdir(parents=True)
    for i in range(count):
        image, caption, _ = shape_scene(np.random.default_rng([seed, i]), 64)
        image.save(folder / f"picture{i:03d}.png")
        (folder / f"picture{i:03d}.txt").write_text(caption)


@pytest.mark.slow
def test_every_walkthrough_command_runs(tmp_path, monkeypatch):
    commands = walkthrough_commands()
    assert len(commands) >= 8
    kinds = {c[1] for c in commands}
    assert {"data", "train-ae", "encode", "train-diffusion", "sample", "eval"} <= kinds
    home = tmp_path / "home"
    pictures(home / "pictures", 24, 0)
    pictures(home / "pictures-val", 12, 1)
    hub = tmp_path / "th" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(random_fid_inception().state_dict(), hub / "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(work)
    for words in commands:
        args = [a.replace("~", str(home), 1) if a.startswith("~/") else a for a in tiny(words)]
        result = run_cli(*args)
        assert result.exit_code == 0, f"{shlex.join(words)}\n{result.output[-3000:]}"
