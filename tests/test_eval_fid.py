"""`ldm eval --fid --kid --isc --prc` end to end with a random Inception saved in the test, against
torch-fidelity called directly on the same weights and images; statistics reuse; weight-file errors."""

import argparse
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch_fidelity
from conftest import random_fid_inception, run_cli
from PIL import Image

SAMPLES, REFS = 10, 12


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ref_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    result = run_cli("data", "build", "digits", "--out", out, "--size", "16", "--count", REFS, "--shard-size", REFS)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """PNGs as `ldm sample` writes them: blobs of colour on dark ground, unlike the digits."""
    out = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for i in range(SAMPLES):
        cy, cx, r = rng.uniform(4, 12, size=2).tolist() + [rng.uniform(2, 6)]
        img = np.zeros((16, 16, 3), np.uint8) + rng.integers(0, 40, size=3, dtype=np.uint8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(60, 256, size=3, dtype=np.uint8)
        Image.fromarray(img).save(out / f"{i:05d}.png")
    return out


class _TarImages(torch.utils.data.Dataset):
    """The reference shard's PNGs read straight from the tar (not through ldmcli's reader)."""

    def __init__(self, shard_dir):
        self.images = []
        for shard in sorted(shard_dir.glob("*.tar")):
            with tarfile.open(shard) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.name.endswith(".png"):
                        im = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                        self.images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_eval_fid_kid_isc_prc_equal_torch_fidelity(inception_file, ref_shards, sample_dir, tmp_path):
    out, stats = tmp_path / "fid.json", tmp_path / "ref.npz"
    result = run_cli(
        "eval", "--fid", "--kid", "--isc", "--prc", "--samples", sample_dir, "--ref", ref_shards,
        "--inception-weights", inception_file, "--dims", "64", "--batch-size", "4",
        "--kid-subset-size", SAMPLES, "--kid-subsets", "5", "--isc-splits", "2", "--save-stats", stats, "--json", out,
    )
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())
    assert ours["images"] == SAMPLES and ours["ref_images"] == REFS and ours["features"] == "inception-64"
    theirs = torch_fidelity.calculate_metrics(
        input1=str(sample_dir), input2=_TarImages(ref_shards), cuda=False, batch_size=4, cache=False, verbose=False,
        feature_extractor="inception-v3-compat",
        fid=True, kid=True, isc=True, prc=True, feature_extractor_weights_path=str(inception_file),
        feature_layer_fid="64", feature_layer_kid="64", feature_layer_prc="64", kid_subset_size=SAMPLES, kid_subsets=5, isc_splits=2,
    )
    assert len(_TarImages(ref_shards)) == REFS
    assert ours["fid"] > 1e-3  # blobs against digits: far apart, and the random features do not vanish
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)
    assert ours["isc_mean"] > 1.01  # 5 images a split: the random logits are not all alike
    assert ours["isc_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert (ours["precision"], ours["recall"]) == (theirs["precision"], theirs["recall"])

    again = run_cli("eval", "--fid", "--samples", sample_dir, "--ref", stats, "--inception-weights", inception_file,
                    "--dims", "64", "--batch-size", "4", "--json", tmp_path / "again.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["fid"] == pytest.approx(ours["fid"], rel=1e-9)
    wrong_space = run_cli("eval", "--fid", "--samples", sample_dir, "--ref", stats, "--inception-weights", inception_file, "--dims", "192")
    assert wrong_space.exit_code == 2 and "'inception-64' features" in wrong_space.output
    kid_from_stats = run_cli("eval", "--kid", "--samples", sample_dir, "--ref", stats, "--inception-weights", inception_file, "--dims", "64")
    assert kid_from_stats.exit_code == 2 and "need reference images" in kid_from_stats.output


def test_missing_inception_weights_name_the_file_and_place(tmp_path, monkeypatch, sample_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run_cli("eval", "--fid", "--samples", sample_dir, "--ref", sample_dir)
    assert result.exit_code == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in result.output
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in result.output.replace("\n", "")
    given = run_cli("eval", "--isc", "--samples", sample_dir, "--inception-weights", tmp_path / "nope.pth")
    assert given.exit_code == 2 and "nope.pth" in given.output


def test_inception_file_with_code_is_refused_not_unpickled(tmp_path, sample_dir):
    bad = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "extra": argparse.Namespace(a=1)}, bad)
    result = run_cli("eval", "--isc", "--samples", sample_dir, "--inception-weights", bad)
    assert result.exit_code == 2 and "more than plain tensors" in result.output


def test_the_grid_beside_samples_is_not_a_sample(tmp_path):
    """`ldm sample --grid` writes grid.png into the samples folder; FID over that folder must not count it."""
    from ldmcli.metrics.features import image_files

    for name in ("00000.png", "00001.png", "grid.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    assert [p.name for p in image_files(str(tmp_path))] == ["00000.png", "00001.png"]
