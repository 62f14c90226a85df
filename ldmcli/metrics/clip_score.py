"""CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 x max(cos(image, text), 0) with an
OpenCLIP model from a local file, over the images `ldm sample` wrote (each PNG carries its prompt)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ldmcli import openclip
from ldmcli.errors import UserError


def prompted_images(folder: Path) -> list[tuple[Path, str]]:
    """(path, prompt) of every PNG in `folder` with a prompt in its text chunks (ldm sample writes it)."""
    if not folder.is_dir():
        raise UserError(f"--samples {folder} is not a folder of PNGs from ldm sample")
    found = []
    for path in sorted(folder.glob("*.png")):
        try:
            with Image.open(path) as im:
                prompt = im.text.get("prompt")
        except OSError:
            continue
        if prompt is not None:
            found.append((path, prompt))
    if not found:
        raise UserError(f"no PNG in {folder} carries a prompt (sample a text model with ldm sample)")
    return found


@torch.no_grad()
def clip_score(arch: str, weights: Path, items: list[tuple[Path, str]], device: torch.device, batch_size: int = 32,
               on_batch: Callable[[int], None] | None = None) -> dict:
    import open_clip

    model = openclip.load_model(arch, weights).to(device)
    cfg = model.visual.preprocess_cfg  # the architecture's own size, mean/std, resize mode and interpolation
    preprocess = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                           resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
    tokenizer = open_clip.get_tokenizer(arch)
    scores = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in chunk]).to(device)
        image_features = model.encode_image(images).float()
        text_features = model.encode_text(tokenizer([t for _, t in chunk]).to(device)).float()
        scores.append(100 * F.cosine_similarity(image_features, text_features, dim=-1).clamp(min=0))
        if on_batch is not None:
            on_batch(len(chunk))
    s = torch.cat(scores)
    return {"clip_score": float(s.mean()), "clip_score_std": float(s.std()) if len(s) > 1 else 0.0, "images": len(s), "clip_arch": arch}
