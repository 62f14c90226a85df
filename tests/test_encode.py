"""`ldm encode`: latent shards that carry their source's fields, and stats over every sample, on every rank."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from ae_fixtures import blob_shards, png_array, tiny_ae  # noqa: F401 (fixtures)
from conftest import ROOT, run_cli

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.latents import check_stats, read_stats
from ldmcli.errors import UserError


def read_tars(folder):
    samples = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return samples


def source_samples(shards):
    return read_tars(shards)


def test_latent_shards_carry_fields_and_stats_cover_every_sample(blob_shards, tiny_ae, tmp_path):  # noqa: F811
    out = tmp_path / "latents"
    result = run_cli("encode", blob_shards, "--ae", tiny_ae / "model", "--out", out, "--batch-size", "7", "--shard-size", "16",
                     "--precision", "fp32", "--dtype", "float32", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["latents-000000.tar", "latents-000001.tar", "latents-000002.tar"]
    written, source = read_tars(out), source_samples(blob_shards)
    assert written.keys() == source.keys()
    model = load_autoencoder(tiny_ae / "model")
    latents = []
    for key, sample in written.items():
        assert sample["txt"] == source[key]["txt"] and sample["cls"] == source[key]["cls"]
        assert json.loads(sample["json"]) == json.loads(source[key]["json"])
        z = np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False)
        assert z.shape == (3, 16, 16) and z.dtype == np.float32
        image = torch.from_numpy(png_array(source[key]["png"]).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            # batch 7 against batch 1 picks other oneDNN kernels: 2.6e-5 apart on an AVX-512 EPYC; a mix-up is O(1)
            np.testing.assert_allclose(z, model.encode(image)[0].numpy(), rtol=1e-4, atol=1e-4)
        latents.append(z)
    stats = read_stats(out)
    everything = np.stack(latents).astype(np.float64)
    assert stats["samples"] == 40 and stats["latent_shape"] == [3, 16, 16] and stats["skipped"] == 0
    assert stats["mean"] == pytest.approx(everything.mean(), abs=1e-6)
    assert stats["std"] == pytest.approx(everything.std(), rel=1e-6)
    assert stats["scale_factor"] == pytest.approx(1 / everything.std(), rel=1e-6)
    np.testing.assert_allclose(stats["channel_std"], everything.std(axis=(0, 2, 3)), rtol=1e-6)
    assert stats["autoencoder"]["bottleneck"] == "kl" and stats["autoencoder"]["factor"] == 2
    check_stats(stats, tiny_ae / "model")


def test_latents_of_another_autoencoder_are_refused(tiny_ae, tmp_path):  # noqa: F811
    stats = {"autoencoder": {"id": "0123456789abcdef", "path": "elsewhere"}, "scale_factor": 1.0}
    with pytest.raises(UserError, match="encoded by autoencoder 0123456789abcdef .* re-encode"):
        check_stats(stats, tiny_ae / "model")
    with pytest.raises(UserError, match="made by `ldm encode`"):
        read_stats(tmp_path)


def test_a_model_dir_of_the_wrong_kind_is_one_line(blob_shards, tmp_path):  # noqa: F811
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text(json.dumps({"kind": "classifier", "format_version": 1, "config": {}}))
    for command in (["encode", blob_shards, "--out", tmp_path / "o"], ["eval", blob_shards, "--recon"]):
        result = run_cli(*command, "--ae", tmp_path / "clf")
        assert result.exit_code == 2 and "holds a 'classifier', expected a 'autoencoder'" in result.output


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_disjoint_shards_and_identical_stats(blob_shards, tiny_ae, tmp_path):  # noqa: F811
    single, double = tmp_path / "one", tmp_path / "two"
    args = [blob_shards, "--ae", tiny_ae / "model", "--batch-size", "8", "--precision", "fp32", "--num-workers", "0"]
    assert run_cli("encode", *args, "--out", single).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "ldmcli",
           "encode", *map(str, args), "--out", str(double), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in double.glob("*.tar")} == {"latents-r000-000000.tar", "latents-r001-000000.tar"}
    assert read_tars(double).keys() == read_tars(single).keys()
    one, two = read_stats(single), read_stats(double)
    assert two["samples"] == one["samples"] == 40
    for key in ("mean", "std", "scale_factor"):  # one thread per rank vs two: fp32 convs round differently
        assert two[key] == pytest.approx(one[key], rel=1e-6)
