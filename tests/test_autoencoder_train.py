"""`ldm train-ae` as a user runs it: recipe + overrides in, model dir, previews and metrics out."""

import json

import pytest
import torch
import torchvision
from ae_fixtures import TINY_AE, blob_shards, labelled_samples, tiny_ae  # noqa: F401 (fixtures)
from conftest import ROOT, run_cli, run_ldm

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.config import AutoencoderRecipe
from ldmcli.autoencoder.task import AutoencoderTask
from ldmcli.config import load_recipe
from ldmcli.data.shards import write_shards
from ldmcli.precision import autocast, resolve


def records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_a_model_dir_and_the_loss_goes_down(tiny_ae):
    recs = records(tiny_ae)
    assert recs[-1]["rec_loss"] < 0.7 * recs[0]["rec_loss"], [r["rec_loss"] for r in recs]
    assert {"loss_autoencoder", "loss_discriminator", "kl", "feature_matching", "d_loss", "logvar"} <= set(recs[-1])
    assert "g_loss" not in recs[0] and {"g_loss", "d_weight"} <= set(recs[-1])  # the GAN starts at disc_start=10
    assert sorted(p.name for p in (tiny_ae / "model").iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]
    assert sorted(p.name for p in (tiny_ae / "samples").iterdir()) == ["step_000020.png", "step_000040.png"]
    model = load_autoencoder(tiny_ae / "model")
    assert model.factor == 2 and not model.training
    z = model.encode(torch.zeros(1, 3, 32, 32))
    assert z.shape == (1, 3, 16, 16)


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    samples = labelled_samples(16)
    samples[3]["png"] = b"\x89PNG broken"
    samples[9]["png"] = samples[9]["png"][:40]
    write_shards(samples, tmp_path / "data", "bad")
    run = tmp_path / "run"
    result = run_cli("train-ae", tmp_path / "data", "--out", run, *TINY_AE, "--set", "train.steps=4", "--set", "loss.feature_matching_weight=0")
    assert result.exit_code == 0, result.output
    assert records(run)[-1]["skipped_samples"] >= 2
    assert (run / "model" / "model.safetensors").is_file()


def test_vq_trains_and_logs_codebook_use(blob_shards, tmp_path):  # noqa: F811
    run = tmp_path / "vq"
    result = run_cli("train-ae", blob_shards, "--out", run, *TINY_AE, "--set", "train.steps=10", "--set", "model.bottleneck=vq",
                     "--set", "model.n_embed=32", "--set", "model.codebook=ema")
    assert result.exit_code == 0, result.output
    rec = records(run)[-1]
    assert {"perplexity", "codes_used", "codebook_loss"} <= set(rec) and 1 <= rec["perplexity"] <= 32


def test_a_bad_recipe_value_is_one_line(blob_shards, tmp_path):  # noqa: F811
    result = run_ldm("train-ae", str(blob_shards), "--out", str(tmp_path / "r"), "--set", "model.bottleneck=gauss")
    assert result.returncode == 2 and "model.bottleneck" in result.stderr and "Traceback" not in result.stderr
    result = run_ldm("train-ae", str(blob_shards), "--out", str(tmp_path / "s"), "--set", "model.shortcut=true", "--set", "model.embed_dim=5", "--set", "loss.perceptual=none")
    assert result.returncode == 2 and "divisible by model.embed_dim (5)" in result.stderr and "Traceback" not in result.stderr
    result = run_ldm("train-ae", str(blob_shards), "--out", str(tmp_path / "t"), "--set", "loss.spectral_weight=1", "--set", "loss.spectral_windows=[0]", "--set", "loss.perceptual=none")
    assert result.returncode == 2 and "loss.spectral_windows" in result.stderr and "Traceback" not in result.stderr


PAPER = ["ae-kl-f4", "ae-kl-f8", "ae-kl-f16", "ae-kl-f32", "ae-vq-f4", "ae-vq-f8", "ae-vq-f16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_builds_and_takes_one_step_at_batch_1(name, tmp_path):
    # LPIPS on a random alexnet's features (a VGG16 file would be 0.5 GB); only the backbone differs.
    features = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(features, tmp_path / "alex.pth")
    recipe = load_recipe(AutoencoderRecipe, ROOT / "recipes" / f"{name}.toml", ["loss.lpips_net=alex", f"loss.lpips_weights={tmp_path / 'alex.pth'}"])
    factor = recipe.model.factor
    assert factor == int(name.split("-f")[1])
    task = AutoencoderTask(recipe)
    params = sum(p.numel() for p in task.models["autoencoder"].parameters())
    assert params > 5e6
    crop = max(32, 2 * factor)
    x = torch.rand(1, 3, crop, crop) * 2 - 1
    batch = {"image": x}
    cpu = torch.device("cpu")
    for phase in task.phases():
        with autocast(cpu, resolve(recipe.train.precision, cpu)):  # as training runs it on this CPU
            loss, logs = task.loss(phase.name, task.models, batch, step=recipe.loss.disc_start)
        loss.backward()
        assert torch.isfinite(loss)
        if phase.name == "autoencoder":
            assert {"perceptual", "g_loss", "d_weight"} <= set(logs)
    grads = [p.grad for p in task.models["autoencoder"].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["ae-kl-f4-photos", "ae-kl-f4-c6-photos", "ae-vq-f4-photos", "ae-kl-f4-shapes", "ae-kl-f4-digits"])
def test_cpu_recipe_builds_at_factor_4_without_pretrained_weights(name):
    recipe = load_recipe(AutoencoderRecipe, ROOT / "recipes" / f"{name}.toml")
    assert recipe.model.factor == 4 and recipe.loss.perceptual == "none" and recipe.train.grad_clip == 0
    task = AutoencoderTask(recipe)
    assert set(task.models) == {"autoencoder", "logvar", "discriminator"}
