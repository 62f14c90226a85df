"""Model files come from strangers: every command that loads a model refuses a broken or hostile one in one
line that names the file and the problem, and nothing in them is ever unpickled."""

import json
import pickle
import shutil

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load, save_file
from test_bad_input import Trap, one_error_line
from test_reader import noise_png, write_tar

from ldmcli.autoencoder.config import KIND as AE_KIND
from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.diffusion import model as M
from ldmcli.diffusion.config import DiffusionRecipe
from ldmcli.diffusion.unet import UNetConfig
from ldmcli.modeldir import save_model_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny autoencoder dir, a tiny pixel-space diffusion dir and an image shard, saved directly."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = AutoencoderConfig(channels=8, channel_mult=[1, 2], num_res_blocks=1, mid_attention=False, z_channels=2, embed_dim=2)
    ae = save_model_dir(root / "ae", AE_KIND, cfg, Autoencoder(cfg))
    unet = UNetConfig(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[], num_heads=2)
    recipe = M.resolve(DiffusionRecipe(unet=unet), 3, 8)
    net, cond = M.build(recipe)
    diffusion = M.save(root / "diffusion", recipe, net, cond, {})
    (root / "data").mkdir()
    write_tar(root / "data" / "i-000000.tar", [{"__key__": f"{i}", "png": noise_png(i, 8)} for i in range(4)])
    return {"ae": ae, "diffusion": diffusion, "data": root / "data"}


def _state(model_dir):
    """The weights read into memory (not mmapped: the tests overwrite the file)."""
    return load((model_dir / "model.safetensors").read_bytes())


def _weights(model_dir, edit):
    state = _state(model_dir)
    edit(state)
    save_file(state, str(model_dir / "model.safetensors"))


def _first_key(state):
    return sorted(k for k in state if k.endswith(".weight"))[0]


def _missing(d):
    _weights(d, lambda s: s.pop(_first_key(s)))
    return "model.safetensors", "Missing key"


def _extra(d):
    _weights(d, lambda s: s.update({"stranger.weight": torch.zeros(3)}))
    return "model.safetensors", "stranger.weight"


def _wrong_shape(d):
    _weights(d, lambda s: s.update({_first_key(s): torch.zeros(1, 2, 3)}))
    return "model.safetensors", "size mismatch"


def _newer_format(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    return "config.json", "format version 99"


def _torch_pickle(d):
    torch.save(_state(d), d / "model.safetensors")
    return "model.safetensors", "not a safetensors file"


def _not_json(d):
    (d / "config.json").write_bytes(b"\x80\x04K\x01.")
    return "config.json", "not valid JSON"


BREAKS = [_missing, _extra, _wrong_shape, _newer_format, _torch_pickle, _not_json]
COMMANDS = {
    "encode": lambda d, m, tmp: ["encode", d["data"], "--ae", m, "--out", tmp / "lat", "--num-workers", "0"],
    "eval": lambda d, m, tmp: ["eval", d["data"], "--recon", "--ae", m],
    "train-diffusion": lambda d, m, tmp: ["train-diffusion", d["data"], "--ae", m, "--out", tmp / "run", "--quiet"],
    "sample": lambda d, m, tmp: ["sample", "--model", m, "--out", tmp / "samples", "--steps", "2", "--n", "1"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("break_dir", BREAKS, ids=lambda f: f.__name__.strip("_"))
def test_a_broken_model_dir_is_one_line_naming_the_file(dirs, tmp_path, command, break_dir):
    model = shutil.copytree(dirs["diffusion" if command == "sample" else "ae"], tmp_path / "model")
    name, problem = break_dir(model)
    one_error_line(run_cli(*COMMANDS[command](dirs, model, tmp_path)), str(model / name), problem)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_dir_of_the_wrong_kind_is_refused(dirs, tmp_path, command):
    other = dirs["ae" if command == "sample" else "diffusion"]
    want = "diffusion" if command == "sample" else "autoencoder"
    one_error_line(run_cli(*COMMANDS[command](dirs, other, tmp_path)), str(other), f"expected a '{want}'")


def _hostile_pickle(path, marker):
    with open(path, "wb") as fh:
        pickle.dump({"features.0.weight": Trap(marker)}, fh, protocol=2)
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pth"])
def test_convert_never_unpickles_code(tmp_path, suffix):
    source = _hostile_pickle(tmp_path / f"model{suffix}", tmp_path / "ran")
    line = one_error_line(run_cli("convert", source, "--out", tmp_path / "out"), str(source), "posix.system")
    assert "weights_only" not in line and not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_lpips_weights_never_unpickle_code(dirs, tmp_path):
    source = _hostile_pickle(tmp_path / "alexnet.pth", tmp_path / "ran")
    result = run_cli("eval", dirs["data"], "--recon", "--ae", dirs["ae"], "--lpips-weights", source, "--precision", "fp32")
    one_error_line(result, str(source), "LPIPS backbone weights", "posix.system")
    assert not (tmp_path / "ran").exists()


def test_a_plain_tensor_pickle_still_imports_with_weights_only(dirs, tmp_path):
    """The legacy path stays open for honest files: a CompVis-named state dict saved by torch.save."""
    from ldmcli.autoencoder import load_autoencoder
    from ldmcli.interop.autoencoder import export_state

    model = load_autoencoder(dirs["ae"])
    torch.save({"state_dict": export_state(model.state_dict(), model.config, "compvis")}, tmp_path / "first_stage.ckpt")
    result = run_cli("convert", tmp_path / "first_stage.ckpt", "--out", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imported" / "model.safetensors").is_file()
