"""Image shards -> latent shards (`key.latent.npy` + the source's txt/cls/json) and stats.json."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ldmcli.autoencoder.model import Autoencoder
from ldmcli.autoencoder.latents import LatentMoments
from ldmcli.modeldir import weights_id
from ldmcli.autoencoder.tiling import tiled_encode
from ldmcli.data.shards import ShardSink
from ldmcli.precision import autocast, resolve
from ldmcli.train.distributed import DistEnv, all_max, all_sum


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def clear_latent_shards(out_dir: Path, name: str) -> None:
    """Remove earlier shards of `name` (any rank's) and stats.json, so a rerun leaves nothing stale."""
    pattern = re.compile(rf"^{re.escape(name)}(-r\d+)?-\d{{6}}\.tar(\.tmp)?$")
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if pattern.match(path.name) or path.name == "stats.json":
                path.unlink()


def encode_shards(
    model: Autoencoder,
    ae_dir: Path,
    batches: Iterable[dict],
    out_dir: Path,
    env: DistEnv,
    *,
    name: str = "latents",
    shard_size: int = 1000,
    dtype: str = "float16",
    precision: str = "auto",
    tile: int = 0,
    on_batch: Callable[[int], None] = lambda n: None,
) -> dict:
    """Encode every batch, write this rank's shards, and return stats reduced over all ranks."""
    moments = LatentMoments(model.latent_channels)
    shapes: set[tuple[int, ...]] = set()
    skipped = count = 0
    device = env.device
    precision = resolve(precision, device)
    with ShardSink(out_dir, name, shard_size) as sink:
        for batch in batches:
            x = batch["image"].to(device)
            with torch.no_grad(), autocast(device, precision):
                z = (tiled_encode(model, x, tile, tile // 4) if tile else model.encode(x)).float()
            moments.add(z)
            shapes.add(tuple(z.shape[1:]))
            skipped += batch["n_skipped"]
            count += x.shape[0]
            for i, key in enumerate(batch["__key__"]):
                sample = {"__key__": key, "latent.npy": npy_bytes(z[i].cpu().numpy().astype(dtype))}
                if batch["txt"][i]:
                    sample["txt"] = batch["txt"][i]
                if int(batch["cls"][i]) >= 0:
                    sample["cls"] = int(batch["cls"][i])
                if batch["json"][i]:
                    sample["json"] = batch["json"][i]
                sink.write(sample)
            on_batch(x.shape[0])
    totals = all_sum(env, moments.vector() + [float(skipped), float(count)])
    shape = next(iter(shapes)) if shapes else (0, 0, 0)
    # Every rank must report the same shape: a rank with no samples contributes zeros to the maximum.
    mixed, *largest = all_max(env, [float(len(shapes) > 1), *map(float, shape)])
    disagree = all_max(env, [float(any(s and s != m for s, m in zip(shape, largest)))])[0]
    agreed = not mixed and not disagree
    return {
        "autoencoder": {
            "id": weights_id(ae_dir),
            "path": str(ae_dir),
            "bottleneck": model.config.bottleneck,
            "factor": model.factor,
            "latent_channels": model.latent_channels,
        },
        "latent_shape": [int(v) for v in largest] if agreed else None,
        "dtype": dtype,
        **moments.summary(totals[:-2]),
        "samples": int(totals[-1]),
        "skipped": int(totals[-2]),
    }
