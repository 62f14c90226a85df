"""Summaries of a shard set: what is in it and a contact sheet to look at."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ldmcli.data.stream import Tally, shard_samples

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ShardInfo:
    shards: int = 0
    samples: int = 0
    keys: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    captions: list[str] = field(default_factory=list)
    bad_images: int = 0
    unreadable_shards: int = 0
    thumbs: list[Image.Image] = field(default_factory=list)


def _image_bytes(sample: dict[str, bytes]) -> bytes | None:
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    return None


def summarize(shards: list[str], n_captions: int = 5, n_thumbs: int = 64) -> ShardInfo:
    """Count samples and keys; histogram image sizes and classes; keep a few captions and thumbnails."""
    info = ShardInfo(shards=len(shards))
    tally = Tally()
    for shard in shards:
        for sample in shard_samples(shard, tally):
            _add(info, sample, n_captions, n_thumbs)
    info.unreadable_shards = tally.take()
    return info


def _add(info: ShardInfo, sample: dict, n_captions: int, n_thumbs: int) -> None:
    sample = {k: v for k, v in sample.items() if not k.startswith("__")}
    info.samples += 1
    info.keys.update(sample.keys())
    if "cls" in sample:
        info.classes[sample["cls"].decode("utf-8", "replace").strip()] += 1
    if "txt" in sample and len(info.captions) < n_captions:
        info.captions.append(sample["txt"].decode("utf-8", "replace"))
    data = _image_bytes(sample)
    if data is None:
        return
    try:
        with Image.open(io.BytesIO(data)) as img:
            info.sizes[f"{img.width}x{img.height}"] += 1
            if len(info.thumbs) < n_thumbs:
                thumb = img.convert("RGB")
                thumb.thumbnail((128, 128), Image.Resampling.LANCZOS)
                info.thumbs.append(thumb)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        info.bad_images += 1


def contact_sheet(images: list[Image.Image], columns: int = 8, tile: int | None = None, gap: int = 2) -> Image.Image:
    """Images in a grid of `columns`, each fitted into a square tile (default: their largest side, 32..128)."""
    if not images:
        raise ValueError("no images for a contact sheet")
    tile = tile or max(32, min(128, max(max(im.size) for im in images)))
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * (tile + gap) + gap, rows * (tile + gap) + gap), (255, 255, 255))
    for i, img in enumerate(images):
        thumb = img.copy()
        scale = tile / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), Image.Resampling.LANCZOS)
        x = gap + (i % columns) * (tile + gap) + (tile - thumb.width) // 2
        y = gap + (i // columns) * (tile + gap) + (tile - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    return sheet


def sorted_classes(classes: Counter) -> list[tuple[str, int]]:
    """Class labels with counts, numeric labels in numeric order."""
    def order(item: tuple[str, int]) -> tuple:
        label = item[0]
        return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)

    return sorted(classes.items(), key=order)


def build_info(folder: Path) -> dict | None:
    """The `info.json` that `ldm data build` wrote beside the shards, if any."""
    path = folder / "info.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def expected_samples(patterns: list[str]) -> int | None:
    """How many samples the given shard folders hold by their info.json, so that a progress bar can show
    an ETA; None when any input is not such a folder (a glob, a URL, shards without info.json)."""
    total = 0
    for pattern in patterns:
        info = build_info(Path(pattern)) if Path(pattern).is_dir() else None
        if info is None or not isinstance(info.get("samples"), int):
            return None
        total += info["samples"]
    return total
