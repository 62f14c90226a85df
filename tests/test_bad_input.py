"""Bad input from strangers: broken shard samples are skipped and counted and the run goes on; broken or
hostile model files are refused in one line that names the file; nothing is ever unpickled."""

import io
import json
import os
import random
import tarfile
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_reader import encode, noise_png, write_tar

from ldmcli.autoencoder.config import KIND as AE_KIND
from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.data.decode import decode_sample
from ldmcli.data.reader import TrainStream, eval_loader
from ldmcli.errors import UserError
from ldmcli.modeldir import save_model_dir

TINY_UNET = [
    "--set", "unet.model_channels=8", "--set", "unet.channel_mult=[1,2]", "--set", "unet.num_res_blocks=1",
    "--set", "unet.attention_levels=[2]", "--set", "unet.num_heads=2", "--set", "data.size=16",
    "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=8", "--set", "data.epoch_samples=16",
    "--set", "train.batch_size=4", "--set", "train.log_every=1", "--quiet",
]


class Trap:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_error_line(result, *needles: str) -> str:
    """The run ended with exit 2 and a single `error:` line on stderr that holds every needle."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def rss(field: str = "VmRSS") -> int:
    """Resident bytes now (VmRSS) or at the peak since reset_peak_rss (VmHWM), from /proc (Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Restart the kernel's peak-RSS counter from the current size, and return that size."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return rss()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def keys_and_skips(loader) -> tuple[list[str], int]:
    batches = list(loader)
    assert sum(b["n_skipped"] for b in batches) == loader.skipped
    return sorted(k for b in batches for k in b["__key__"]), loader.skipped


# --- shards ---------------------------------------------------------------------------------------


def test_zero_byte_shard_is_one_skip_and_alone_a_clear_error(tmp_path):
    write_tar(tmp_path / "a-000000.tar", [{"__key__": f"g{i}", "png": noise_png(i)} for i in range(3)])
    (tmp_path / "a-000001.tar").write_bytes(b"")
    assert keys_and_skips(eval_loader([str(tmp_path)], batch_size=2, size=8)) == (["g0", "g1", "g2"], 1)
    stream = TrainStream([str(tmp_path)], batch_size=2, size=8, num_workers=0, shuffle_buffer=0, epoch_samples=6)
    batches = [b for _, b in zip(range(6), stream)]
    assert stream.skipped > 0 and all(k.startswith("g") for b in batches for k in b["__key__"])
    with pytest.raises(UserError, match="no readable sample.*a-000001.tar"):
        next(iter(TrainStream([str(tmp_path / "a-000001.tar")], batch_size=2, size=8, num_workers=0)))


def test_truncated_jpeg_is_skipped(tmp_path):
    jpg = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)), "JPEG")
    samples = [{"__key__": "good", "jpg": jpg}, {"__key__": "cut", "jpg": jpg[: len(jpg) // 2]},
               {"__key__": "no-end", "jpg": jpg[:-2]}, {"__key__": "head", "jpg": jpg[:40]}]
    write_tar(tmp_path / "j-000000.tar", samples)
    assert keys_and_skips(eval_loader([str(tmp_path)], batch_size=4, size=8)) == (["good"], 3)


def test_captions_that_are_not_utf8_or_empty_are_kept(tmp_path):
    samples = [{"__key__": "latin1", "png": noise_png(0), "txt": "café".encode("latin-1")},
               {"__key__": "empty", "png": noise_png(1), "txt": b""},
               {"__key__": "binary", "png": noise_png(2), "txt": bytes(range(256))}]
    write_tar(tmp_path / "t-000000.tar", samples)
    (batch,) = list(eval_loader([str(tmp_path)], batch_size=4, size=8, required=("image", "txt")))
    assert batch["n_skipped"] == 0
    assert batch["txt"][:2] == ["caf\ufffd", ""] and len(batch["txt"][2]) == 256


def test_class_that_is_not_an_integer_is_skipped_and_out_of_range_is_kept_for_the_task(tmp_path):
    labels = {"ok": b"3", "big": b"42", "neg": b"-1", "word": b"three", "frac": b"1.5", "empty": b"", "bytes": b"\xff\xfe"}
    write_tar(tmp_path / "c-000000.tar", [{"__key__": k, "png": noise_png(i), "cls": v} for i, (k, v) in enumerate(labels.items())])
    loader = eval_loader([str(tmp_path)], batch_size=8, size=8, required=("image", "cls"))
    (batch,) = list(loader)
    assert loader.skipped == 4 and batch["__key__"] == ["ok", "big", "neg"] and batch["cls"].tolist() == [3, 42, -1]


def test_diffusion_trains_on_out_of_range_classes_as_unconditional(tmp_path):
    samples = [{"__key__": f"{i:03d}", "png": noise_png(i), "cls": str([0, 1, 7, -3][i % 4]).encode()} for i in range(16)]
    (tmp_path / "data").mkdir()
    write_tar(tmp_path / "data" / "c-000000.tar", samples)
    run = tmp_path / "run"
    result = run_cli("train-diffusion", tmp_path / "data", "--out", run, *TINY_UNET, "--set", "conditioner.kind=class",
                     "--set", "conditioner.num_classes=2", "--set", "train.steps=3", "--set", "preview.n=2")
    assert result.exit_code == 0, result.output
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3] and sum(r["bad_labels"] for r in recs) > 0
    assert all(np.isfinite(r["loss"]) for r in recs) and (run / "model" / "model.safetensors").is_file()


def test_latents_of_the_wrong_shape_or_dtype_are_skipped(tmp_path):
    marker = tmp_path / "unpickled"
    good = np.zeros((4, 2, 2), np.float16)
    bad = {"shape": np.zeros((4, 3, 3), np.float16), "flat": np.zeros((4, 4), np.float32), "complex": good.astype(np.complex64),
           "bool": good.astype(bool), "text": np.array(["a", "b"]), "object": np.array([Trap(marker)], dtype=object)}
    samples = [{"__key__": k, "latent.npy": npy(v)} for k, v in bad.items()] + [{"__key__": "junk", "latent.npy": b"\x93NUMPY"}]
    samples.append({"__key__": "escape", "latent.npy": npy(good).replace(b"'<f2'", b"'\\!2'")})  # numpy warns on this header
    samples += [{"__key__": "good0", "latent.npy": npy(good)}, {"__key__": "wide", "latent.npy": npy(good.astype(np.float64))}]
    write_tar(tmp_path / "l-000000.tar", samples)
    loader = eval_loader([str(tmp_path)], batch_size=8, required=("latent",), latent_shape=(4, 2, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert keys_and_skips(loader) == (["good0", "wide"], 8)
    assert not caught, [str(w.message) for w in caught]
    stream = TrainStream([str(tmp_path)], batch_size=2, size=None, num_workers=0, shuffle_buffer=0, epoch_samples=10,
                         required=("latent",), latent_shape=(4, 2, 2))
    first = next(iter(stream))
    assert first["latent"].shape == (2, 4, 2, 2) and first["latent"].dtype == torch.float32
    assert first["n_skipped"] == stream.skipped == 8
    assert not marker.exists()


def test_train_diffusion_on_latents_skips_a_wrong_latent_and_goes_on(tmp_path):
    cfg = AutoencoderConfig(channels=8, channel_mult=[1, 2], num_res_blocks=1, mid_attention=False, z_channels=2, embed_dim=2)
    ae = save_model_dir(tmp_path / "ae", AE_KIND, cfg, Autoencoder(cfg))
    (tmp_path / "img").mkdir()
    write_tar(tmp_path / "img" / "i-000000.tar", [{"__key__": f"{i:03d}", "png": noise_png(i, 16)} for i in range(12)])
    lat = tmp_path / "lat"
    assert run_cli("encode", tmp_path / "img", "--ae", ae, "--out", lat, "--num-workers", "0", "--precision", "fp32").exit_code == 0
    (shard,) = lat.glob("*.tar")
    with tarfile.open(shard) as tar:
        good = [{"__key__": m.name.split(".")[0], m.name.split(".", 1)[1]: tar.extractfile(m).read()} for m in tar.getmembers()]
    wrong = [{"__key__": f"w{i}", "latent.npy": npy(np.zeros((2, 4, 4), np.float16))} for i in range(2)]
    write_tar(shard, wrong + good)
    run = tmp_path / "run"
    result = run_cli("train-diffusion", lat, "--out", run, *TINY_UNET,
                     "--set", "data.size=8", "--set", "unet.attention_levels=[]", "--set", "train.steps=4", "--set", "preview.n=2")
    assert result.exit_code == 0, result.output
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 4 and recs[-1]["skipped_samples"] >= 2 and "corrupt or incomplete samples" in result.output


def test_duplicate_file_names_skip_the_copy_not_the_rest_of_the_shard(tmp_path):
    members = [("a.png", noise_png(0)), ("a.png", noise_png(1)), ("b.png", noise_png(2)), ("b.txt", b"x"), ("b.txt", b"y"),
               ("c.png", noise_png(3)), ("a.png", noise_png(4)), ("d.png", noise_png(5))]
    path = tmp_path / "d-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = eval_loader([str(path)], batch_size=8, size=None)
    (batch,) = list(loader)
    assert batch["__key__"] == ["a", "b", "c", "d"] and batch["txt"][1] == "x" and loader.skipped == 3
    first = np.array(Image.open(io.BytesIO(noise_png(0))))
    assert torch.equal(batch["image"][0], torch.from_numpy(first).permute(2, 0, 1).float() / 127.5 - 1)


def test_a_long_thin_image_is_cropped_before_it_is_resized():
    """Scaling a 1 x 100,000 strip's short side to 64 first would allocate 1.2 GB for one sample."""
    strip = encode(Image.new("L", (1, 100_000), 200))
    before = reset_peak_rss()
    out = decode_sample({"__key__": "k", "png": strip}, size=64, crop="random", rng=random.Random(0))
    assert out["image"].shape == (3, 64, 64) and (out["image"] == 200).all()
    assert rss("VmHWM") - before < 100 * 2**20


def test_resume_after_a_kill_that_cut_a_metrics_line_short(tmp_path):
    (tmp_path / "data").mkdir()
    write_tar(tmp_path / "data" / "d-000000.tar", [{"__key__": f"{i:03d}", "png": noise_png(i)} for i in range(8)])
    run = tmp_path / "run"
    args = [*TINY_UNET, "--set", "train.steps=2", "--set", "train.ckpt_every=2", "--set", "preview.n=2"]
    assert run_cli("train-diffusion", tmp_path / "data", "--out", run, *args).exit_code == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')
    result = run_cli("train-diffusion", "--resume", run, "--set", "train.steps=4", "--quiet")
    assert result.exit_code == 0, result.output
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
