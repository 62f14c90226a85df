"""LPIPS with a backbone file made here: the standard cache path, --lpips-weights, and the missing-file message."""

import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import run_ldm
from PIL import Image

from ldmcli.autoencoder.lpips_loader import BACKBONE_FILES, load_lpips
from ldmcli.data.shards import encode_png, write_shards
from ldmcli.errors import UserError


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a randomly initialised alexnet under torchvision's file name."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), home / "hub" / "checkpoints" / BACKBONE_FILES["alex"])
    return home


def test_explicit_file_gives_what_lpips_itself_computes_with_that_backbone(torch_home):
    ours = load_lpips("alex", torch_home / "hub" / "checkpoints" / BACKBONE_FILES["alex"])
    # lpips builds torchvision's alexnet, which finds the file in TORCH_HOME: an independent loading path.
    code = (
        "import torch, lpips, sys; torch.manual_seed(1); a, b = torch.rand(2, 2, 3, 32, 32) * 2 - 1;"
        "m = lpips.LPIPS(net='alex', verbose=False); print(*m(a, b).flatten().tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], env={"TORCH_HOME": str(torch_home), "PATH": ""}, capture_output=True, text=True, check=True)
    expected = torch.tensor([float(v) for v in out.stdout.split()])
    torch.manual_seed(1)
    a, b = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(a, b).flatten(), expected, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in ours.parameters())


def test_standard_cache_path_is_used(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = load_lpips("alex")
    x = torch.rand(1, 3, 32, 32)
    assert float(model(x, x).flatten()[0]) == pytest.approx(0.0, abs=1e-6)


def test_missing_or_wrong_file_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth.*--lpips-weights"):
        load_lpips("alex")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="not a torchvision alex checkpoint"):
        load_lpips("alex", tmp_path / "wrong.pth")


def test_train_ae_asking_for_lpips_without_weights_fails_at_start(tmp_path):
    png = encode_png(Image.new("RGB", (16, 16), (200, 30, 30)))
    write_shards([{"png": png}] * 4, tmp_path / "data", "tiny")
    result = run_ldm("train-ae", "data", "--out", "run", "--set", "loss.perceptual=lpips", cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "th")})
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "alexnet-owt-7be5be79.pth" in lines[0]
