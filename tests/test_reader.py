"""The shard reader: decoding, shard lists, exact-once evaluation, skipped samples, exact resume."""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcli.data.decode import CorruptSample, decode_image, decode_sample
from ldmcli.data.reader import TrainStream, eval_loader, resolve_shards, to_device
from ldmcli.errors import UserError


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


def write_tar(path: Path, samples: list[dict], cut_last: bool = False) -> Path:
    """Samples are {"__key__": k, ext: bytes}; `cut_last` truncates the file inside its last member."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if cut_last:
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-1]
        path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])
    return path


def image_shards(root: Path, shards: int, per_shard: int, size: int = 16) -> list[Path]:
    out = []
    for s in range(shards):
        samples = [
            {"__key__": f"s{s}-{i:03d}", "png": noise_png(s * 1000 + i, size), "cls": str(i % 3).encode()}
            for i in range(per_shard)
        ]
        out.append(write_tar(root / f"train-{s:06d}.tar", samples))
    return out


def rgb(data: bytes) -> np.ndarray:
    """Decoded HxWx3 uint8, full size."""
    return decode_image(data, size=None, crop="center", flip=False, rng=random.Random(0)).permute(1, 2, 0).numpy()


# --- decoding -------------------------------------------------------------------------------------


def test_grey_palette_and_alpha_become_rgb_on_white():
    grey = rgb(encode(Image.new("L", (8, 8), 77)))
    assert grey.shape == (8, 8, 3) and (grey == 77).all()

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))
    pal = rgb(encode(pal, transparency=0))
    assert (pal[:, :4] == [200, 10, 10]).all() and (pal[:, 4:] == 255).all()

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 4))
    rgba.paste((0, 0, 0, 128), (0, 4, 8, 8))
    out = rgb(encode(rgba))
    assert (out[:4] == [0, 0, 255]).all() and (out[4:] == 127).all()


def test_sixteen_bit_is_scaled_not_clipped():
    wide = np.array([[65535, 32896, 257, 0]] * 4, dtype=np.uint16)
    im = Image.fromarray(wide)
    assert im.mode.startswith("I;16")
    out = rgb(encode(im))
    assert out[0, :, 0].tolist() == [255, 128, 1, 0]


def test_cmyk_jpeg_becomes_rgb():
    out = rgb(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 230 and g < 30 and b < 30


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (16, 8), (255, 0, 0))
    im.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display needs a quarter turn clockwise
    out = rgb(encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (16, 8, 3)
    assert out[:6, :, 0].mean() > 200 and out[10:, :, 2].mean() > 200


def test_resize_crop_flip_and_range():
    im = np.zeros((20, 40, 3), dtype=np.uint8)
    im[:, :20] = 255
    data = encode(Image.fromarray(im))
    centre = decode_image(data, size=10, crop="center", flip=False, rng=random.Random(0))
    assert centre.shape == (3, 10, 10) and centre.dtype == torch.uint8
    assert (centre[:, :, :4] == 255).all() and (centre[:, :, 6:] == 0).all()
    crops = {decode_image(data, size=10, crop="random", flip=True, rng=random.Random(s)).float().mean().item() for s in range(8)}
    assert len(crops) > 1
    sample = decode_sample({"__key__": "k", "png": data}, size=10, crop="center")
    batch_image = (sample["image"].float() / 127.5 - 1)
    assert batch_image.min() == -1 and batch_image.max() == 1


def test_rotate_with_flip_draws_all_eight_symmetries_of_the_square():
    im = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    data = encode(Image.fromarray(im))
    symmetries = {np.rot90(f, k).tobytes() for f in (im, im[:, ::-1]) for k in range(4)}
    seen = set()
    for seed in range(64):
        out = decode_image(data, size=4, crop="center", flip=True, rotate=True, rng=random.Random(seed)).permute(1, 2, 0).numpy()
        assert out.tobytes() in symmetries
        seen.add(out.tobytes())
    assert seen == symmetries


def test_train_stream_turns_images_and_rotate_needs_a_size(tmp_path):
    shards = image_shards(tmp_path, 1, 4)
    with pytest.raises(UserError, match="data.rotate needs data.size"):
        TrainStream([str(p) for p in shards], batch_size=2, size=None, rotate=True, num_workers=0)
    stream = TrainStream([str(p) for p in shards], batch_size=4, size=16, crop="center", flip=False, rotate=True, num_workers=0,
                         shuffle_buffer=0, epoch_samples=4)
    batch = next(iter(stream))
    stored = [torch.from_numpy(rgb(noise_png(i))).permute(2, 0, 1).float() / 127.5 - 1 for i in range(4)]
    turned = [any(torch.equal(b, torch.rot90(s, k, (1, 2))) for k in range(4)) for b, s in zip(batch["image"], stored)]
    assert all(turned) and not all(torch.equal(b, s) for b, s in zip(batch["image"], stored))


def test_decompression_bomb_is_refused():
    png = bytearray(encode(Image.new("RGB", (8, 8))))
    ihdr = struct.pack(">II", 20000, 10000) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(CorruptSample, match="limit"):
        decode_sample({"__key__": "k", "png": bytes(png)}, size=8)


def test_text_fields_and_missing_keys():
    out = decode_sample({"__key__": "k", "txt": b"caf\xe9", "cls": b" 3\n", "json": b'{"a": 1}'}, size=8)
    assert out["txt"] == "caf\ufffd" and out["cls"] == 3 and out["json"] == {"a": 1} and "image" not in out
    empty = decode_sample({"__key__": "k"}, size=8)
    assert (empty["txt"], empty["cls"], empty["json"]) == ("", -1, {})
    with pytest.raises(CorruptSample, match="missing image"):
        decode_sample({"__key__": "k", "txt": b"x"}, size=8, required=("image",))
    with pytest.raises(CorruptSample):
        decode_sample({"__key__": "k", "cls": b"three"}, size=8)


def test_latent_and_cls_shard(tmp_path):
    latents = [np.random.default_rng(i).standard_normal((4, 2, 2)).astype(np.float16) for i in range(3)]
    samples = []
    for i, lat in enumerate(latents):
        buf = io.BytesIO()
        np.save(buf, lat)
        samples.append({"__key__": f"{i:04d}", "latent.npy": buf.getvalue(), "cls": str(i + 5).encode(), "txt": b"hi"})
    shard = write_tar(tmp_path / "lat-000000.tar", samples)
    (batch,) = list(eval_loader([str(shard)], batch_size=8, required=("latent",)))
    assert batch["latent"].dtype == torch.float32 and batch["latent"].shape == (3, 4, 2, 2)
    assert torch.equal(batch["latent"], torch.from_numpy(np.stack(latents).astype(np.float32)))
    assert batch["cls"].tolist() == [5, 6, 7] and batch["txt"] == ["hi"] * 3 and "image" not in batch
    assert batch["__key__"] == ["0000", "0001", "0002"] and batch["n_skipped"] == 0


# --- shard lists ----------------------------------------------------------------------------------


def test_resolve_braces_globs_dirs_and_urls(tmp_path):
    shards = [str(p) for p in image_shards(tmp_path, 3, 1)]
    assert resolve_shards([f"{tmp_path}/train-{{000000..000002}}.tar"]) == shards
    assert resolve_shards(f"{tmp_path}/train-*.tar") == shards
    assert resolve_shards([str(tmp_path)]) == shards
    assert resolve_shards([f"file://{shards[0]}"]) == shards[:1]
    assert resolve_shards(["pipe:cat x-{0..1}.tar", "s3://b/y.tar"]) == ["pipe:cat x-0.tar", "pipe:cat x-1.tar", "s3://b/y.tar"]
    with pytest.raises(UserError, match="not found: .*train-000003.tar"):
        resolve_shards([f"{tmp_path}/train-{{000000..000007}}.tar"])
    with pytest.raises(UserError, match="nothing-"):
        resolve_shards([f"{tmp_path}/nothing-*.tar"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        resolve_shards([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no data shards"):
        resolve_shards([])
    with pytest.raises(UserError, match="missing.tar"):
        TrainStream([str(tmp_path / "missing.tar")], batch_size=2, size=8)


def test_pipe_url_is_read(tmp_path):
    (shard,) = image_shards(tmp_path, 1, 5)
    batches = list(eval_loader([f"pipe:cat {shard}"], batch_size=2, size=8))
    assert [len(b["__key__"]) for b in batches] == [2, 2, 1]
    assert batches[0]["image"].shape == (2, 3, 8, 8) and batches[0]["cls"].tolist() == [0, 1]


# --- evaluation: each sample exactly once ---------------------------------------------------------


@pytest.mark.parametrize("shards", [3, 8])
def test_eval_visits_each_sample_once_over_ranks_and_workers(tmp_path, shards):
    image_shards(tmp_path, shards, 5, size=8)
    keys = []
    for rank in range(2):
        for batch in eval_loader([str(tmp_path)], batch_size=3, rank=rank, world_size=2, num_workers=2):
            assert batch["image"].shape[1:] == (3, 8, 8) and batch["n_skipped"] == 0
            keys += batch["__key__"]
    assert sorted(keys) == sorted(f"s{s}-{i:03d}" for s in range(shards) for i in range(5))


# --- corrupt samples ------------------------------------------------------------------------------


def corrupt_shards(root: Path) -> list[Path]:
    """11 good samples and 4 skips: truncated PNG, random bytes, no image, a truncated tar."""
    good = [{"__key__": f"g{i:02d}", "png": noise_png(i)} for i in range(8)]
    bad = [
        {"__key__": "bad-trunc", "png": noise_png(99)[:60]},
        {"__key__": "bad-bytes", "png": bytes(random.Random(1).randrange(256) for _ in range(300))},
        {"__key__": "bad-noimg", "txt": b"caption only"},
    ]
    first = write_tar(root / "c-000000.tar", good[:3] + bad[:2] + good[3:6] + bad[2:] + good[6:])
    tail = [{"__key__": f"t{i}", "png": noise_png(50 + i)} for i in range(4)]
    return [first, write_tar(root / "c-000001.tar", tail, cut_last=True)]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, workers):
    corrupt_shards(tmp_path)
    loader = eval_loader([str(tmp_path)], batch_size=4, size=8, num_workers=workers)
    batches = list(loader)
    keys = [k for b in batches for k in b["__key__"]]
    assert sorted(keys) == [f"g{i:02d}" for i in range(8)] + ["t0", "t1", "t2"]
    assert loader.skipped == 4 and sum(b["n_skipped"] for b in batches) == 4


def test_train_counts_skips_exactly(tmp_path):
    (shard, _) = corrupt_shards(tmp_path)
    stream = TrainStream([str(shard)], batch_size=3, size=8, num_workers=0, shuffle_buffer=0, epoch_samples=11)
    it = iter(stream)
    first = [next(it) for _ in range(3)]
    assert [b["n_skipped"] for b in first] == [0, 2, 1]
    assert all(k.startswith("g") for b in first for k in b["__key__"]) and stream.skipped == 3


def test_no_readable_sample_is_a_user_error(tmp_path):
    bad = write_tar(tmp_path / "bad-000000.tar", [{"__key__": f"b{i}", "png": b"not an image"} for i in range(3)])
    with pytest.raises(UserError, match="no readable sample"):
        list(eval_loader([str(bad)], batch_size=2))
    with pytest.raises(UserError, match="no readable sample"):
        next(iter(TrainStream([str(bad)], batch_size=2, size=8, num_workers=0, epoch_samples=50)))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="no readable sample"):
        next(iter(TrainStream([str(junk)], batch_size=2, size=8, num_workers=1)))


# --- training: exact resume -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(tmp_path, workers):
    image_shards(tmp_path, 3, 6)
    tail = [{"__key__": f"t{i}", "png": noise_png(70 + i)} for i in range(3)] + [{"__key__": "x", "png": b"junk"}]
    write_tar(tmp_path / "train-000003.tar", tail, cut_last=True)
    opts = dict(batch_size=4, size=8, seed=3, num_workers=workers, shuffle_buffer=5, epoch_samples=7)
    stream = TrainStream([str(tmp_path)], **opts)
    it = iter(stream)
    first = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(stream.state_dict()))
    expected = [next(it) for _ in range(5)]
    resumed = TrainStream([str(tmp_path)], state=state, **opts)
    got = [b for _, b in zip(range(5), resumed)]
    for a, b in zip(expected, got):
        assert a["__key__"] == b["__key__"] and a["__pos__"] == b["__pos__"] and a["n_skipped"] == b["n_skipped"]
        assert torch.equal(a["image"], b["image"])
    assert resumed.skipped == stream.skipped and sum(b["n_skipped"] for b in first + expected) == stream.skipped
    assert len({k for b in first + expected for k in b["__key__"]}) > 10


def test_resume_with_other_workers_restarts_fresh(tmp_path, caplog):
    image_shards(tmp_path, 1, 4)
    state = {"version": 1, "world_size": 1, "num_workers": 2, "batches": 9, "skipped": 2, "streams": [[3, 1], [4, 0]]}
    stream = TrainStream([str(tmp_path)], batch_size=2, size=8, num_workers=0, state=state)
    assert "starts fresh at epoch 5" in caplog.text
    assert stream.state_dict()["streams"] == [[5, 0]] and stream.skipped == 2
    with pytest.raises(UserError, match="version"):
        TrainStream([str(tmp_path)], batch_size=2, size=8, state={**state, "version": 99})


def test_to_device_moves_tensors_only(tmp_path):
    image_shards(tmp_path, 1, 2)
    batch = next(iter(TrainStream([str(tmp_path)], batch_size=2, size=8, num_workers=0)))
    moved = to_device(batch, "cpu")
    assert moved["image"].device.type == "cpu" and moved["txt"] == batch["txt"] and moved["n_skipped"] == 0
    assert batch["image"].dtype == torch.float32 and -1 <= batch["image"].min() and batch["image"].max() <= 1
