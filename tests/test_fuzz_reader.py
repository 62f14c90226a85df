"""Fuzzing the shard reader: seeded random mutations of tar and image bytes for a fixed time. Only the
reader's own outcomes may come out (a batch, a counted skip, or a UserError when nothing is readable),
and memory stays bounded: declared image sizes are checked before any pixel buffer is allocated."""

import io
import json
import random
import struct
import tarfile
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from test_bad_input import reset_peak_rss, rss

from ldmcli.data.decode import MAX_PIXELS, CorruptSample, decode_sample, open_image
from ldmcli.data.reader import TrainStream, eval_loader
from ldmcli.errors import UserError

SECONDS = 15
# Bytes over the starting RSS. A valid image at the pixel limit decoded at full size (size=None) holds up to
# ~20 bytes a pixel at once: PIL's RGB (4), its uint8 array (3) and the float32 tensor (12); compositing
# transparency and scaling 16-bit data stay within that. A mutated palette PNG declaring 64M pixels took
# 24 bytes a pixel before to_rgb composited in place (1.24 GB over the start); nothing else may come near.
PEAK_LIMIT = 20 * MAX_PIXELS


def _image(fmt: str, mode: str, rng: random.Random) -> bytes:
    size = (rng.randint(1, 24), rng.randint(1, 24))
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    im = Image.fromarray(pixels, "RGBA").convert(mode) if mode != "I;16" else Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _seed_sample(key: str, rng: random.Random) -> dict:
    fmt, mode = rng.choice([("PNG", "RGB"), ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "CMYK")])
    npy = io.BytesIO()
    np.save(npy, np.zeros((2, 2, 2), np.float16))
    return {"__key__": key, "png" if fmt == "PNG" else "jpg": _image(fmt, mode, rng), "txt": b"a caption",
            "cls": str(rng.randint(-2, 12)).encode(), "json": json.dumps({"i": key}).encode(), "latent.npy": npy.getvalue()}


def _declare_size(data: bytes, rng: random.Random) -> bytes:
    """A PNG that claims other dimensions, with a valid header checksum so that the decoder believes it."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33:
        return data
    ihdr = struct.pack(">II", rng.randint(1, 1 << rng.randint(1, 31)), rng.randint(1, 1 << rng.randint(1, 31))) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        if how == 0 and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            del data[rng.randint(0, len(data)):]
        elif how == 2:
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif how == 3 and data:
            at = rng.randrange(len(data))
            data[at:at + rng.randint(1, 512)] = bytes(rng.randint(0, 64))
        elif how == 4:
            data = bytearray(_declare_size(bytes(data), rng))
        elif data:
            at, length = rng.randrange(len(data)), rng.randint(1, 512)
            data.extend(data[at:at + length])
    return bytes(data)


def _tar(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sample in samples:
            for ext, value in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(value)
                    tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def _case(rng: random.Random) -> bytes:
    """Shard bytes: mutated members in a good tar, a mutated tar, or noise."""
    samples = [_seed_sample(f"k{i}", rng) for i in range(rng.randint(1, 4))]
    kind = rng.random()
    if kind < 0.5:
        for sample in samples:
            for ext in rng.sample(sorted(k for k in sample if k != "__key__"), rng.randint(1, 3)):
                sample[ext] = _mutate(sample[ext], rng)
        return _tar(samples)
    if kind < 0.95:
        return _mutate(_tar(samples), rng)
    return rng.randbytes(rng.randint(0, 4096))


def _read(path, rng: random.Random) -> None:
    """One pass of the reader over the shard; only the reader's own outcomes may come out."""
    required = rng.choice([("image",), ("image", "cls"), ("latent",), ()])
    try:
        if rng.random() < 0.7:
            for _ in eval_loader([str(path)], batch_size=rng.randint(1, 3), size=8, required=required, latent_shape=(2, 2, 2)):
                pass
        else:
            stream = TrainStream([str(path)], batch_size=2, size=8, num_workers=0, shuffle_buffer=rng.randint(0, 3),
                                 epoch_samples=4, required=required, latent_shape=(2, 2, 2), seed=rng.randrange(100))
            for _, _ in zip(range(2), stream):
                pass
    except UserError as err:
        assert "no readable sample" in str(err), err


@pytest.mark.slow
def test_random_shards_never_crash_the_reader_and_memory_stays_bounded(tmp_path):
    start, rng, shard = reset_peak_rss(), random.Random(20261126), tmp_path / "fuzz-000000.tar"
    cases, deadline = 0, time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        data = _case(rng)
        shard.write_bytes(data)
        _read(shard, rng)
        sample = _seed_sample("one", rng)
        image_key = "png" if "png" in sample else "jpg"
        try:
            decode_sample({**sample, image_key: _mutate(sample[image_key], rng)}, size=rng.choice([None, 8]), required=("image",))
        except CorruptSample:
            pass
        cases += 1
    assert cases > 100, cases
    assert rss("VmHWM") - start < PEAK_LIMIT, (rss("VmHWM") - start) / 2**20


def test_transparency_is_composited_without_full_size_copies():
    """A 16M-pixel palette PNG with a transparency key peaked at 17 bytes a pixel through alpha_composite's
    full-size copies, 9 when composited in place: the fuzzed shards above reached 64M such pixels."""
    side = 4096
    pal = Image.new("P", (side, side), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(0, (0, 0, side, 16))  # transparent rows on top
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    del pal
    start = reset_peak_rss()
    out = open_image(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((0, 16)) == (200, 10, 10)
    assert (rss("VmHWM") - start) / side**2 < 12
