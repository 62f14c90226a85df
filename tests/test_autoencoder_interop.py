"""diffusers and CompVis weights: the same network, so the same numbers, in both directions."""

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from ldmcli.autoencoder import load_autoencoder
from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.interop.autoencoder import export_state, import_autoencoder

diffusers = pytest.importorskip("diffusers")

BLOCKS = dict(block_out_channels=(32, 64), layers_per_block=1)


def random_kl(attn: bool = True):
    torch.manual_seed(0)
    down = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D")
    up = ("AttnUpDecoderBlock2D" if attn else "UpDecoderBlock2D", "UpDecoderBlock2D")
    model = diffusers.AutoencoderKL(down_block_types=down, up_block_types=up, latent_channels=4, **BLOCKS).eval()
    with torch.no_grad():  # GroupNorm affine and biases away from their 1/0 defaults, so a swap would show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_vq():
    torch.manual_seed(1)
    return diffusers.VQModel(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3, num_vq_embeddings=64, vq_embed_dim=3, **BLOCKS,
    ).eval()


def test_diffusers_kl_imports_to_the_same_encode_and_decode(tmp_path):
    ref = random_kl()
    ref.save_pretrained(tmp_path / "vae")
    ours = import_autoencoder(tmp_path / "vae").eval()
    assert ours.config.attn_factors == [2] and ours.config.scaling_factor == pytest.approx(0.18215)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert (ours.encode(x) - ref.encode(x).latent_dist.mean).abs().max() < 1e-4
        assert (ours.posterior(x).std - ref.encode(x).latent_dist.std).abs().max() < 1e-4
        assert (ours.decode(z) - ref.decode(z).sample).abs().max() < 1e-4


def test_diffusers_vq_imports_with_encode_before_the_quantiser(tmp_path):
    ref = random_vq()
    ref.save_pretrained(tmp_path / "vq")
    ours = import_autoencoder(tmp_path / "vq").eval()
    assert ours.config.bottleneck == "vq" and ours.config.n_embed == 64
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = ref.encode(x).latents
        assert (ours.encode(x) - h).abs().max() < 1e-4
        assert (ours.decode(h) - ref.decode(h).sample).abs().max() < 1e-4


def test_export_to_diffusers_loads_into_diffusers_and_matches(tmp_path):
    torch.manual_seed(0)
    ours = Autoencoder(AutoencoderConfig(channels=32, channel_mult=[1, 2], num_res_blocks=1, attn_factors=[1], z_channels=4, embed_dim=4)).eval()
    from ldmcli.modeldir import save_model_dir

    save_model_dir(tmp_path / "ours", "autoencoder", ours.config, ours)
    result = run_cli("convert", tmp_path / "ours", "--to", "diffusers", "--out", tmp_path / "exported")
    assert result.exit_code == 0, result.output
    ref = diffusers.AutoencoderKL.from_pretrained(tmp_path / "exported").eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert (ref.encode(x).latent_dist.mean - ours.encode(x)).abs().max() < 1e-4
        z = ours.encode(x)
        assert (ref.decode(z).sample - ours.decode(z)).abs().max() < 1e-4


def test_compvis_checkpoint_imports_via_the_cli_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = AutoencoderConfig(bottleneck="vq", channels=32, channel_mult=[1, 2, 2], num_res_blocks=2, attn_factors=[4], z_channels=3, embed_dim=3, n_embed=32)
    ours = Autoencoder(cfg).eval()
    compvis = export_state(ours.state_dict(), cfg, "compvis")
    assert "encoder.down.2.attn.1.q.weight" in compvis and "decoder.up.0.block.2.conv1.weight" in compvis
    assert compvis["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # An LDM checkpoint: the first stage under a prefix, next to a UNet and the training loss's weights.
    ckpt = {"state_dict": {**{f"first_stage_model.{k}": v for k, v in compvis.items()},
                           "first_stage_model.loss.logvar": torch.zeros(()), "model.diffusion_model.x": torch.zeros(1)}}
    torch.save(ckpt, tmp_path / "ldm.ckpt")
    result = run_cli("convert", tmp_path / "ldm.ckpt", "--out", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    assert "VQ-f4" in result.output
    back = load_autoencoder(tmp_path / "imported")
    assert json.loads((tmp_path / "imported" / "config.json").read_text())["config"]["attn_factors"] == [4]
    for key, value in ours.state_dict().items():
        if key.startswith("quantize.") and not key.endswith("embedding.weight"):
            continue
        assert torch.equal(back.state_dict()[key], value), key
    result = run_cli("convert", tmp_path / "imported", "--to", "compvis", "--out", tmp_path / "first_stage.safetensors")
    assert result.exit_code == 0, result.output
    written = load_file(str(tmp_path / "first_stage.safetensors"))
    assert written.keys() == compvis.keys() and all(torch.equal(written[k], compvis[k]) for k in compvis)


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "notes.ckpt").write_bytes(b"not a checkpoint")
    result = run_cli("convert", tmp_path / "notes.ckpt", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "cannot read weights" in result.output
    torch.save({"state_dict": {"unet.weight": torch.zeros(1)}}, tmp_path / "unet.ckpt")
    result = run_cli("convert", tmp_path / "unet.ckpt", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "not a CompVis first-stage checkpoint" in result.output
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    result = run_cli("convert", tmp_path / "dir", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "UNet2DModel" in result.output


def test_export_refuses_an_autoencoder_with_shortcuts(tmp_path):
    cfg = AutoencoderConfig(channels=32, channel_mult=[1, 2], num_res_blocks=1, z_channels=4, embed_dim=4)
    torch.save({"state_dict": export_state(Autoencoder(cfg).state_dict(), cfg, "compvis")}, tmp_path / "ae.ckpt")
    assert run_cli("convert", tmp_path / "ae.ckpt", "--out", tmp_path / "ours").exit_code == 0
    config = tmp_path / "ours" / "config.json"
    payload = json.loads(config.read_text())
    payload["config"]["shortcut"] = True
    config.write_text(json.dumps(payload))
    for fmt, out in (("diffusers", tmp_path / "d"), ("compvis", tmp_path / "c.safetensors")):
        result = run_cli("convert", tmp_path / "ours", "--to", fmt, "--out", out)
        assert result.exit_code == 2 and "shortcuts" in result.output and not out.exists()
