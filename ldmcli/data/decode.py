"""Turn one raw WebDataset sample (bytes per extension) into tensors, or say why it cannot be used.

Every image becomes 3-channel RGB whatever the file held (grey, palette, alpha, 16-bit, CMYK), so that
models never see a mode they were not built for. Anything that fails to decode raises CorruptSample,
which the reader counts and skips: one bad file must never end a week-long run.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ldmcli.errors import UserError

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
MAX_PIXELS = 10**8
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_ROWS = 256


class CorruptSample(Exception):
    """A sample that cannot be used; the reader skips it and counts it."""


def has_key(raw: Mapping, name: str) -> bool:
    """Whether a raw sample carries `name`, where "image" means any image extension and "latent" the npy."""
    if name == "image":
        return any(k in raw for k in IMAGE_KEYS)
    if name == "latent":
        return "latent.npy" in raw
    return name in raw


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit data is scaled (not clipped) and transparency is composited on white.

    Works on `im` in place, or a band of rows at a time, so that no full-size RGBA or float copy is made: a
    hostile shard may declare any size up to MAX_PIXELS (tests/test_fuzz_reader.py bounds the peak).
    """
    if im.mode in _SIXTEEN_BIT:
        wide = np.asarray(im)
        narrow = np.empty(wide.shape, np.uint8)
        for top in range(0, wide.shape[0], _ROWS):
            rows = wide[top:top + _ROWS].astype(np.float32)
            np.clip(rows * (255 / 65535) + 0.5, 0, 255, out=rows)
            narrow[top:top + _ROWS] = rows
        del wide
        im = Image.fromarray(narrow, "L")
    if im.mode in _ALPHA or "transparency" in im.info:
        if im.mode not in ("RGBA", "LA"):
            im = im.convert("RGBA")
        behind = ImageOps.invert(im.getchannel("A"))
        im.paste((255,) * len(im.getbands()), mask=behind)
        del behind
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(data: bytes, size: int | None = None) -> Image.Image:
    """Decode bytes to an upright RGB image, refusing declared sizes that would exhaust memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise CorruptSample(f"image declares {width}x{height} pixels, over the limit of {MAX_PIXELS}")
    if size is not None and im.format == "JPEG":
        im.draft(None, (size, size))
    ImageOps.exif_transpose(im, in_place=True)
    return to_rgb(im)


def resize_crop(im: Image.Image, size: int, crop: str, rng: random.Random) -> Image.Image:
    """Shorter side to `size` (antialiased), then a `size`x`size` random or centre crop. Only the crop is
    resampled (a source box), so a long thin image never becomes a huge intermediate one."""
    width, height = im.size
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale))) if scale != 1 else (width, height)
    if crop == "random":
        left, top = rng.randint(0, target[0] - size), rng.randint(0, target[1] - size)
    else:
        left, top = (target[0] - size) // 2, (target[1] - size) // 2
    if target == (width, height):
        return im if target == (size, size) else im.crop((left, top, left + size, top + size))
    sx, sy = width / target[0], height / target[1]
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


_QUARTER_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def decode_image(
    data: bytes, *, size: int | None, crop: str, flip: bool, rng: random.Random, rotate: bool = False
) -> torch.Tensor:
    """uint8 tensor 3xHxW; the float conversion happens once per batch in collate. `rotate` adds a random
    quarter turn, which with `flip` draws from all eight symmetries of the square (the usual augmentation of
    super-resolution training, where texture has no up or down); it draws from `rng` only when on, so
    runs without it keep their bitwise augmentation stream."""
    im = open_image(data, size)
    if size is not None:
        im = resize_crop(im, size, crop, rng)
    if flip and rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rotate:
        turn = _QUARTER_TURNS[rng.randrange(4)]
        im = im if turn is None else im.transpose(turn)
    return torch.from_numpy(np.ascontiguousarray(np.array(im, dtype=np.uint8).transpose(2, 0, 1)))


def decode_latent(data: bytes, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A CxHxW numeric array (never unpickled), of `shape` when one is expected. numpy parses the header
    with ast.literal_eval, which warns about a damaged header's stray backslashes before refusing it; the
    refusal is what counts (a skipped sample), so the warning is not passed on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        array = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise CorruptSample("latent.npy does not hold a numeric array")
    if array.ndim != 3 or (shape is not None and array.shape != tuple(shape)):
        want = f"{tuple(shape)}" if shape is not None else "C x H x W"
        raise CorruptSample(f"latent.npy has shape {array.shape}, expected {want}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def decode_sample(
    raw: Mapping,
    *,
    size: int | None,
    crop: str = "center",
    flip: bool = False,
    rotate: bool = False,
    rng: random.Random | None = None,
    required: Sequence[str] = (),
    latent_shape: Sequence[int] | None = None,
) -> dict:
    """Decode the fields the models use; raise CorruptSample for a missing required key or bad bytes."""
    missing = [name for name in required if not has_key(raw, name)]
    if missing:
        raise CorruptSample(f"missing {', '.join(missing)}")
    rng = rng or random.Random(0)
    out: dict = {"__key__": str(raw.get("__key__", ""))}
    try:
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        if image_key is not None:
            out["image"] = decode_image(raw[image_key], size=size, crop=crop, flip=flip, rng=rng, rotate=rotate)
        if "latent.npy" in raw:
            out["latent"] = decode_latent(raw["latent.npy"], latent_shape)
        out["txt"] = raw["txt"].decode("utf-8", errors="replace") if "txt" in raw else ""
        out["cls"] = int(raw["cls"].decode("ascii").strip()) if "cls" in raw else -1
        out["json"] = json.loads(raw["json"]) if "json" in raw else {}
    except CorruptSample:
        raise
    except Exception as exn:
        raise CorruptSample(f"{type(exn).__name__}: {exn}") from None
    return out


def collate(samples: Sequence[dict]) -> dict:
    """Stack decoded samples into a batch; "image"/"latent" appear when every sample has one."""
    batch: dict = {
        "__key__": [s["__key__"] for s in samples],
        "txt": [s["txt"] for s in samples],
        "cls": torch.tensor([s["cls"] for s in samples], dtype=torch.long),
        "json": [s["json"] for s in samples],
    }
    for name in ("image", "latent"):
        if not all(name in s for s in samples):
            continue
        shapes = sorted({tuple(s[name].shape) for s in samples})
        if len(shapes) > 1:
            hint = "; give the reader a size" if name == "image" else ""
            raise UserError(f"samples in one batch differ in {name} shape {shapes}{hint}")
        batch[name] = torch.stack([s[name] for s in samples])
    if "image" in batch:
        batch["image"] = batch["image"].to(torch.float32).div_(127.5).sub_(1.0)
    return batch
