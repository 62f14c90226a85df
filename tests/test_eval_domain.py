"""`ldm eval --features classifier`: FID/KID in a classifier's feature space and class accuracy of
labelled samples, with a tiny classifier trained through the CLI, against the classifier run by hand."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import run_cli, train
from PIL import Image, PngImagePlugin
from pytorch_fid.fid_score import calculate_frechet_distance
from safetensors.torch import load_file

from ldmcli.classifier import Classifier, ClassifierModelConfig

TINY = [
    "--set", "model.channels=8", "--set", "model.stages=2", "--set", "data.size=16", "--set", "data.flip=false",
    "--set", "train.batch_size=32", "--set", "train.lr=1e-2", "--set", "data.shuffle_buffer=64",
    "--set", "data.epoch_samples=200", "--set", "data.num_workers=0", "--set", "train.steps=120", "--set", "train.ema_decay=0.9",
]


@pytest.fixture(scope="module")
def classifier_dir(digits_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("clf") / "run"
    result = run_cli("train-classifier", digits_shards, "--out", run, *TINY, "--quiet")
    assert result.exit_code == 0, result.output
    return run / "model"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-val")
    result = run_cli("data", "build", "digits", "--split", "val", "--out", out, "--size", "16", "--count", "60", "--shard-size", "60")
    assert result.exit_code == 0, result.output
    return out


def _shard_images(shard_dir):
    """(uint8 N x 16 x 16 x 3, labels) read straight from the tar."""
    images, labels = {}, {}
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                if ext == "png":
                    images[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                elif ext == "cls":
                    labels[key] = int(data)
    keys = sorted(images)
    return np.stack([images[k] for k in keys]), np.array([labels[k] for k in keys])


def _write_samples(out, images, labels):
    """PNGs as `ldm sample` writes them for a class model: the class in an iTXt chunk."""
    out.mkdir()
    for i, (img, c) in enumerate(zip(images, labels)):
        info = PngImagePlugin.PngInfo()
        info.add_itxt("class", str(int(c)))
        Image.fromarray(img).save(out / f"{i:05d}.png", pnginfo=info)
    return out


def _by_hand(classifier_dir, images):
    model = Classifier(ClassifierModelConfig(num_classes=10, channels=8, stages=2)).eval()
    model.load_state_dict(load_file(str(classifier_dir / "ema.safetensors")))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        features = model.embed(x)
        return features.double().numpy(), model.head(features).argmax(1).numpy()


def test_domain_fid_and_accuracy_equal_the_classifier_by_hand(classifier_dir, held_out, tmp_path):
    images, labels = _shard_images(held_out)
    samples = _write_samples(tmp_path / "samples", images[:30], labels[:30])
    wrong = _write_samples(tmp_path / "wrong", images[:30], (labels[:30] + 1) % 10)
    common = ["--features", "classifier", "--classifier", classifier_dir, "--batch-size", "16"]

    out = tmp_path / "domain.json"
    result = run_cli("eval", "--fid", "--kid", "--accuracy", "--samples", samples, "--ref", held_out, "--kid-subset-size", "20",
                     "--kid-subsets", "10", "--json", out, *common)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    features, predicted = _by_hand(classifier_dir, images)
    ref_accuracy = float((predicted == labels).mean())
    assert ref_accuracy > 0.5  # the tiny classifier has learned digits
    assert figures["ref_accuracy"] == pytest.approx(ref_accuracy, abs=1e-12)
    assert figures["accuracy"] == pytest.approx(float((predicted[:30] == labels[:30]).mean()), abs=1e-12)
    expected = calculate_frechet_distance(features[:30].mean(0), np.cov(features[:30], rowvar=False), features.mean(0), np.cov(features, rowvar=False))
    assert figures["fid"] == pytest.approx(expected, rel=1e-4)
    assert figures["features"].startswith("classifier-") and figures["images"] == 30 and figures["ref_images"] == 60

    mislabelled = run_cli("eval", "--accuracy", "--samples", wrong, "--json", tmp_path / "wrong.json", *common)
    assert mislabelled.exit_code == 0, mislabelled.output
    assert json.loads((tmp_path / "wrong.json").read_text())["accuracy"] < figures["accuracy"] - 0.3


def test_accuracy_needs_labels_and_a_classifier(classifier_dir, tmp_path):
    unlabelled = tmp_path / "plain"
    unlabelled.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(unlabelled / f"{i}.png")
    result = run_cli("eval", "--accuracy", "--samples", unlabelled, "--features", "classifier", "--classifier", classifier_dir)
    assert result.exit_code == 2 and "needs class labels" in result.output
    result = run_cli("eval", "--accuracy", "--samples", unlabelled)
    assert result.exit_code == 2 and "--features classifier" in result.output
    result = run_cli("eval", "--fid", "--samples", unlabelled, "--ref", unlabelled, "--features", "classifier")
    assert result.exit_code == 2 and "--classifier MODEL_DIR" in result.output


def test_shards_as_samples_with_limit_and_saved_statistics(classifier_dir, held_out, digits_shards, tmp_path):
    common = ["--features", "classifier", "--classifier", classifier_dir, "--batch-size", "16", "--limit", "40"]
    stats, first, second = tmp_path / "val.npz", tmp_path / "a.json", tmp_path / "b.json"
    result = run_cli("eval", "--fid", "--samples", digits_shards, "--ref", held_out, "--save-stats", stats, "--json", first, *common)
    assert result.exit_code == 0, result.output
    figures = json.loads(first.read_text())
    assert figures["images"] == 40 and figures["ref_images"] == 40
    result = run_cli("eval", "--fid", "--samples", digits_shards, "--ref", stats, "--json", second, *common)
    assert result.exit_code == 0, result.output
    assert json.loads(second.read_text())["fid"] == pytest.approx(figures["fid"], rel=1e-9)
    with np.load(stats) as saved:
        assert str(saved["features"]) == figures["features"] and saved["mu"].shape == (16,)  # 8 channels x 2 stages


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_single_process_figures(classifier_dir, held_out, tmp_path):
    images, labels = _shard_images(held_out)
    samples = _write_samples(tmp_path / "samples", images[:31], labels[:31])  # odd: ranks get 16 and 15
    args = ["eval", "--fid", "--kid", "--accuracy", "--samples", str(samples), "--ref", str(held_out), "--kid-subset-size", "20",
            "--features", "classifier", "--classifier", str(classifier_dir), "--batch-size", "8"]
    assert run_cli(*args, "--json", tmp_path / "one.json").exit_code == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ldmcli", *args,
           "--json", str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (two["images"], two["ref_images"]) == (31, 60)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
    assert (two["accuracy"], two["ref_accuracy"]) == (one["accuracy"], one["ref_accuracy"])

    lonely = _write_samples(tmp_path / "one-sample", images[:1], labels[:1])  # rank 1 reads nothing
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ldmcli", "eval", "--accuracy",
           "--samples", str(lonely), "--features", "classifier", "--classifier", str(classifier_dir), "--json", str(tmp_path / "lonely.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "lonely.json").read_text())["images"] == 1


def test_corrupt_samples_are_skipped_and_counted(classifier_dir, held_out, tmp_path):
    shard = tmp_path / "with-bad" / "bad-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(next(held_out.glob("*.tar"))) as src, tarfile.open(shard, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        for name, data in (("zzbad.png", b"not a png"), ("zzbad.cls", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    out = tmp_path / "skip.json"
    result = run_cli("eval", "--fid", "--samples", shard.parent, "--ref", held_out, "--json", out,
                     "--features", "classifier", "--classifier", classifier_dir)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert (figures["images"], figures["skipped"], figures["ref_images"], figures["ref_skipped"]) == (60, 1, 60, 0)
    assert figures["fid"] == pytest.approx(0.0, abs=1e-6)  # the same 60 images on both sides
    assert "skipped corrupt samples: 1" in result.output


@pytest.mark.slow
def test_sampler_sweep_gives_fid_against_nfe_per_sampler(digits_shards, classifier_dir, held_out, tmp_path_factory, tmp_path):
    model = train(tmp_path_factory, digits_shards, "--set", "conditioner.kind=class")
    common = ["eval", "--sweep", "--model", model, "--ref", held_out, "--features", "classifier", "--classifier", classifier_dir,
              "--n", "20", "--batch-size", "10"]
    result = run_cli(*common, "--samplers", "ddim,heun", "--sweep-steps", "2,3", "--json", tmp_path / "sweep.json",
                     "--plot", tmp_path / "sweep.png")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("ddim", 2, 2), ("ddim", 3, 3), ("heun", 2, 3), ("heun", 3, 5)]
    assert all(r["fid"] >= 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert Image.open(tmp_path / "sweep.png").size[0] > 100 and "NFE" in result.output
    again = run_cli(*common, "--samplers", "heun", "--sweep-steps", "3", "--json", tmp_path / "again.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["rows"][0]["fid"] == pytest.approx(rows[3]["fid"], rel=1e-6)
    for args, message in ((["--samplers", "nope"], "unknown sampler"), (["--sweep-steps", "a,b"], "comma-separated")):
        bad = run_cli(*common, *args)
        assert bad.exit_code == 2 and message in bad.output
