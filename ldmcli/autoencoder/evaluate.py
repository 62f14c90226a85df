"""Reconstruction evaluation of an autoencoder over shards, next to bicubic resampling to the same latent size
and through an RGB image holding as many numbers as the latent (the fair baseline for more than 3 channels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image

from ldmcli.autoencoder.model import Autoencoder
from ldmcli.autoencoder.tiling import tiled_decode, tiled_encode
from ldmcli.images import to_uint8
from ldmcli.metrics.recon import ReconAccumulator, bicubic_roundtrip, bicubic_through, same_numbers_side
from ldmcli.precision import autocast, resolve


def reconstruct(model: Autoencoder, images: torch.Tensor, precision: str = "auto", tile: int = 0) -> torch.Tensor:
    """Encode (posterior mean / pre-quantisation) and decode; `tile` > 0 goes through overlapping tiles."""
    with torch.no_grad(), autocast(images.device, resolve(precision, images.device)):
        if tile:
            z = tiled_encode(model, images, tile, tile // 4)
            t = max(1, tile // model.factor)
            return tiled_decode(model, z, t, max(1, t // 4)).float()
        return model.decode(model.encode(images)).float()


def save_pairs(out_dir: Path, keys: list[str], original: torch.Tensor, recon: torch.Tensor) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, a, b in zip(keys, to_uint8(original), to_uint8(recon)):
        name = key.replace("/", "_") or "sample"
        Image.fromarray(a).save(out_dir / f"{name}.orig.png")
        Image.fromarray(b).save(out_dir / f"{name}.recon.png")


def evaluate_recon(
    model: Autoencoder,
    batches: Iterable[dict],
    device: torch.device,
    lpips: torch.nn.Module | None = None,
    precision: str = "auto",
    tile: int = 0,
    save_dir: Path | None = None,
    reduce: Callable[[list[float]], list[float]] = lambda v: v,
    on_batch: Callable[[int], None] = lambda n: None,
) -> dict:
    """Figures for the model and for bicubic; `reduce` sums accumulator vectors over ranks."""
    ours, bicubic = ReconAccumulator(model.factor, lpips), ReconAccumulator(model.factor, lpips)
    same_numbers = ReconAccumulator(model.factor)
    skipped, channels = 0, model.config.embed_dim
    for batch in batches:
        x = batch["image"].to(device)
        recon = reconstruct(model, x, precision, tile).clamp(-1, 1)
        ours.add(x, recon)
        bicubic.add(x, bicubic_roundtrip(x, model.factor))
        same_numbers.add(x, bicubic_through(x, tuple(same_numbers_side(n, model.factor, channels) for n in x.shape[-2:])))
        skipped += batch["n_skipped"]
        if save_dir is not None:
            save_pairs(save_dir, batch["__key__"], x, recon)
        on_batch(x.shape[0])
    n = len(ours.vector())
    total = reduce(ours.vector() + bicubic.vector() + same_numbers.vector() + [float(skipped)])
    for i, acc in enumerate((ours, bicubic, same_numbers)):
        acc.load_vector(total[i * n : (i + 1) * n])
    result = {**ours.result(), "rfid": None}
    result |= {f"bicubic_{k}": v for k, v in bicubic.result().items()} | {"bicubic_rfid": None}
    result |= {f"bicubic_same_numbers_{k}": v for k, v in same_numbers.result().items() if k != "lpips"}
    result["latent_channels"] = channels
    result |= {"images": int(ours.sums["count"]), "skipped": int(total[-1]), "factor": model.factor}
    return result
