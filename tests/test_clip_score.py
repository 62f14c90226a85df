"""`ldm eval --clip-score` on PNGs that carry their prompts, with a tiny OpenCLIP model of random weights
saved in the test: equal to the formula computed directly on the model, and clear errors."""

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image, PngImagePlugin

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def write_samples(folder, rng):
    folder.mkdir()
    images = []
    for k, prompt in enumerate(PROMPTS * 2):
        info = PngImagePlugin.PngInfo()
        info.add_itxt("prompt", prompt)
        image = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
        image.save(folder / f"{k:05d}.png", pnginfo=info)
        images.append((image, prompt))
    return images


def test_clip_score_equals_the_formula_on_the_same_weights(tiny_clip, tmp_path):
    model, weights = tiny_clip
    images = write_samples(tmp_path / "samples", np.random.default_rng(0))
    out = tmp_path / "clip.json"
    result = run_cli("eval", "--clip-score", "--samples", tmp_path / "samples", "--clip-arch", "TinyCLIP-test",
                     "--clip-weights", weights, "--json", out, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())

    cfg = model.visual.preprocess_cfg
    preprocess = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                           resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
    with torch.no_grad():
        fi = model.encode_image(torch.stack([preprocess(im) for im, _ in images]))
        ft = model.encode_text(open_clip.get_tokenizer("TinyCLIP-test")([p for _, p in images]))
    expected = (100 * F.cosine_similarity(fi, ft, dim=-1).clamp(min=0)).mean().item()
    assert figures["images"] == 6
    assert figures["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert "CLIP score" in result.output


@pytest.mark.parametrize("args, message", [
    (["--samples", "{empty}"], "--clip-weights"),
    (["--samples", "{empty}", "--clip-weights", "{weights}"], "carries a prompt"),
    (["--samples", "{tmp}/nope", "--clip-weights", "{weights}"], "not a folder"),
    (["--samples", "{samples}", "--clip-weights", "{tmp}/missing.safetensors"], "OpenCLIP weights not found"),
    (["--samples", "{empty}", "--clip-weights", "{weights}", "--fid"], "metric of its own"),
])
def test_clip_score_mistakes_are_one_line_errors(tiny_clip, tmp_path, args, message):
    _, weights = tiny_clip
    (tmp_path / "empty").mkdir()
    write_samples(tmp_path / "samples", np.random.default_rng(1))
    filled = [a.format(empty=tmp_path / "empty", samples=tmp_path / "samples", weights=weights, tmp=tmp_path) for a in args]
    result = run_cli("eval", "--clip-score", "--clip-arch", "TinyCLIP-test", *filled)
    assert result.exit_code == 2 and message in result.output, result.output
