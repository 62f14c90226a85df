"""Images to feature matrices for sample metrics: from a folder of PNGs (`ldm sample` output) or shards.

Feature networks get the 8-bit pictures a user would see (uint8, Bx3xHxW), as torch-fidelity and
pytorch-fid do, so figures equal theirs on the same files. A folder of images is read in sorted order;
its class label, when `ldm sample` wrote one, comes from the PNG text chunk "class" (-1 otherwise).
Under torchrun each rank reads its share and the rows are gathered on every rank at the end: FID and
accuracy do not depend on row order; KID subsets and IS splits are drawn over rows in rank order, so
those differ slightly (within their std) from a single process's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from ldmcli.data.decode import CorruptSample, open_image, resize_crop
from ldmcli.data.reader import eval_loader
from ldmcli.errors import UserError
from ldmcli.images import GRID_NAME
from ldmcli.train.distributed import DistEnv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class FeatureSpace:
    """Maps uint8 images to {"features": N x D, "logits": N x C}: FID/KID/precision-recall use the
    features, Inception Score and accuracy the logits. The name goes into saved statistics so that a
    reference saved in one space is never compared with samples measured in another."""

    name: str
    embed: Callable[[torch.Tensor], dict[str, torch.Tensor]]


def image_files(source: str) -> list[Path] | None:
    """The images of a folder that holds images and no shards; None for anything the shard reader takes.
    The grid `ldm sample --grid` writes beside its samples is not one of them."""
    path = Path(source)
    if not path.is_dir() or any(path.glob("*.tar")):
        return None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name != GRID_NAME)
    if not files:
        raise UserError(f"no images (*.png, *.jpg, *.webp) and no *.tar shards in {source}")
    return files


def _read_file(path: Path, size: int | None) -> tuple[torch.Tensor, int]:
    try:
        im = open_image(path.read_bytes(), size)
        label = Image.open(path).info.get("class") if path.suffix.lower() == ".png" else None
    except (OSError, CorruptSample) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    if size is not None:
        im = resize_crop(im, size, "center", None)
    array = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1), int(label) if label is not None and str(label).lstrip("-").isdigit() else -1


def _folder_batches(files: list[Path], batch_size: int, size: int | None) -> Iterator[dict]:
    """Consecutive images of one size per batch (a size change closes the batch)."""
    images, labels = [], []
    for path in files:
        image, label = _read_file(path, size)
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield {"image": torch.stack(images), "cls": torch.tensor(labels)}
            images, labels = [], []
        images.append(image)
        labels.append(label)
    if images:
        yield {"image": torch.stack(images), "cls": torch.tensor(labels)}


def _shard_batches(source: str, batch_size: int, size: int | None, env: DistEnv, num_workers: int) -> Iterator[dict]:
    loader = eval_loader(source, batch_size=batch_size, size=size, rank=env.rank, world_size=env.world_size, num_workers=num_workers)
    for batch in loader:
        pixels = batch["image"].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        yield {"image": pixels, "cls": batch["cls"], "n_skipped": batch["n_skipped"]}


def uint8_batches(source: str, batch_size: int, size: int | None, env: DistEnv, limit: int = 0, num_workers: int = 0) -> Iterator[dict]:
    """This rank's share of the images of `source` (folder or shards) as uint8 batches, about `limit` in all."""
    files = image_files(source)
    if files is not None:
        share = files[: limit or None][env.rank :: env.world_size]
        yield from _folder_batches(share, batch_size, size)
        return
    seen, own_limit = 0, -(-limit // env.world_size) if limit else 0
    for batch in _shard_batches(source, batch_size, size, env, num_workers):
        if own_limit and seen + batch["image"].shape[0] > own_limit:
            keep = own_limit - seen
            batch = {**batch, "image": batch["image"][:keep], "cls": batch["cls"][:keep]}
        if batch["image"].shape[0]:
            yield batch
        seen += batch["image"].shape[0]
        if own_limit and seen >= own_limit:
            return


def gather(env: DistEnv, rows: dict[str, np.ndarray], skipped: int) -> tuple[dict[str, np.ndarray], int]:
    """Every rank's rows, concatenated in rank order, and the summed skip count, on every rank.
    A rank that read nothing sends an empty dict, so that no rank waits for it."""
    if not env.distributed:
        return rows, skipped
    parts: list = [None] * env.world_size
    dist.all_gather_object(parts, (rows, skipped))
    names = [name for part, _ in parts for name in part]
    merged = {name: np.concatenate([part[name] for part, _ in parts if name in part]) for name in dict.fromkeys(names)}
    return merged, sum(n for _, n in parts)


@torch.no_grad()
def extract(
    batches: Iterator[dict],
    embed: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    env: DistEnv,
    on_batch: Callable[[int], None] = lambda n: None,
) -> tuple[dict[str, np.ndarray], int]:
    """Feature matrices (float64, one row per image) named as `embed` names them, plus "cls" labels,
    and the number of corrupt samples the shard reader skipped."""
    parts: dict[str, list[np.ndarray]] = {}
    skipped = 0
    for batch in batches:
        out = embed(batch["image"].to(env.device)) | {"cls": batch["cls"]}
        for name, value in out.items():
            parts.setdefault(name, []).append(value.detach().cpu().double().numpy())
        skipped += int(batch.get("n_skipped", 0))
        on_batch(batch["image"].shape[0])
    rows, skipped = gather(env, {name: np.concatenate(chunks) for name, chunks in parts.items()}, skipped)
    if not rows:
        raise UserError("no images to evaluate")
    return rows, skipped
