"""`ldm sample` as a user runs it, on tiny models trained through `ldm train-diffusion`: PNGs with their
settings, seeds that reproduce, every sampler, text prompts, larger-than-trained sizes, img2img,
inpainting, and one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, train
from PIL import Image
from torch._dynamo.utils import counters

from ldmcli.autoencoder.config import KIND as AE_KIND
from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.modeldir import save_model_dir

@pytest.fixture(scope="module")
def class_model(digits_shards, tmp_path_factory):
    """Pixel space (LDM-1), 10 classes, 16 px."""
    return train(tmp_path_factory, digits_shards, "--set", "conditioner.kind=class")


@pytest.fixture(scope="module")
def latent_model(digits_shards, tmp_path_factory):
    """Unconditional, on the latents of a random-weight KL-f2 autoencoder (8x8x2 latents of 16 px images)."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(channels=8, channel_mult=[1, 2], num_res_blocks=1, mid_attention=False, z_channels=2, embed_dim=2)
    ae = save_model_dir(tmp_path_factory.mktemp("ae") / "model", AE_KIND, cfg, Autoencoder(cfg))
    return train(tmp_path_factory, digits_shards, "--ae", ae)


def sample(model, out, *args):
    result = run_cli("sample", "--model", model, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return result


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_class_samples_carry_their_settings_and_a_grid(class_model, tmp_path):
    result = sample(class_model, tmp_path, "--class", "3", "--class", "7", "--n", "2", "--batch", "3", "--sampler", "euler_a",
                    "--steps", "3", "--cfg", "2", "--seed", "5", "--grid")
    assert "wrote 4 images" in result.output and "img/s" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png", "grid.png"]
    text = Image.open(tmp_path / "00002.png").text
    assert {k: text[k] for k in ("class", "seed", "sampler", "steps", "spacing", "guidance", "size")} == {
        "class": "7", "seed": "7", "sampler": "euler_a", "steps": "3", "spacing": "linspace", "guidance": "2", "size": "16x16"}
    assert text["model"] == str(class_model) and len(text["model_id"]) == 16
    assert Image.open(tmp_path / "grid.png").size == (2 * 18 + 2, 2 * 18 + 2)


def test_a_model_dir_carries_its_default_sampler(class_model, tmp_path):
    """A recipe's [sampling] section sets the sampler and steps used when the command is not told."""
    model = tmp_path / "model"
    shutil.copytree(class_model, model)
    config = json.loads((model / "config.json").read_text())
    assert config["config"]["sampling"] == {"sampler": "dpmpp_2m", "steps": 25}
    config["config"]["sampling"] = {"sampler": "ddim", "steps": 2}
    (model / "config.json").write_text(json.dumps(config))
    for args, want in (((), ("ddim", "2")), (("--sampler", "euler_a"), ("euler_a", "2")), (("--steps", "3"), ("ddim", "3"))):
        sample(model, tmp_path / "out", "--class", "1", "--n", "1", *args)
        text = Image.open(tmp_path / "out" / "00000.png").text
        assert (text["sampler"], text["steps"]) == want


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde"])
def test_a_seed_gives_the_same_image_bitwise_whatever_the_batch(class_model, tmp_path, sampler):
    args = ["--class", "1", "--n", "3", "--sampler", sampler, "--steps", "2", "--seed", "11"]
    sample(class_model, tmp_path / "a", *args, "--batch", "3")
    sample(class_model, tmp_path / "b", *args, "--batch", "1")
    sample(class_model, tmp_path / "c", *args[:-1], "12", "--n", "1")
    for name in ("00000.png", "00001.png", "00002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert np.array_equal(pixels(tmp_path / "a" / "00001.png"), pixels(tmp_path / "c" / "00000.png"))  # seed 12 alone
    assert not np.array_equal(pixels(tmp_path / "a" / "00000.png"), pixels(tmp_path / "a" / "00001.png"))


def test_every_sampler_runs_from_the_command_line(class_model, tmp_path):
    for name in SAMPLERS:
        sample(class_model, tmp_path / name, "--class", "2", "--n", "1", "--sampler", name, "--steps", "2")
        assert Image.open(tmp_path / name / "00000.png").text["sampler"] == name
    sample(class_model, tmp_path / "k", "--class", "2", "--n", "1", "--sampler", "dpmpp_2m", "--steps", "3", "--karras")
    for eta in ("0", "0.6"):
        sample(class_model, tmp_path / f"eta{eta}", "--class", "2", "--n", "1", "--sampler", "euler_a", "--steps", "3", "--eta", eta)
        assert Image.open(tmp_path / f"eta{eta}" / "00000.png").text["eta"] == eta
    sample(class_model, tmp_path / "euler", "--class", "2", "--n", "1", "--sampler", "euler", "--steps", "3")
    assert np.array_equal(pixels(tmp_path / "eta0" / "00000.png"), pixels(tmp_path / "euler" / "00000.png"))
    assert not np.array_equal(pixels(tmp_path / "eta0.6" / "00000.png"), pixels(tmp_path / "euler" / "00000.png"))


@pytest.mark.slow
def test_compiled_unet_draws_the_eager_images_and_pads_the_short_last_batch(class_model, tmp_path):
    args = ["--class", "4", "--n", "3", "--batch", "2", "--steps", "3", "--dtype", "fp32", "--seed", "2"]
    sample(class_model, tmp_path / "eager", *args)
    counters.clear()
    result = sample(class_model, tmp_path / "compiled", *args, "--compile")
    assert "compiling the UNet" in result.output
    assert counters["stats"]["unique_graphs"] == 1  # one compile, no graph break, no recompile for the last batch
    for name in ("00000.png", "00001.png", "00002.png"):  # the third went through a batch padded from 1 to 2
        assert np.abs(pixels(tmp_path / "eager" / name) - pixels(tmp_path / "compiled" / name)).max() <= 2


def test_text_prompts_from_options_and_a_file_with_a_negative_prompt(text_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square above a green triangle\n")
    sample(text_model, tmp_path / "out", "--prompt", "a yellow square", "--prompts", prompts, "--n", "1", "--steps", "2",
           "--negative", "blurry", "--rescale", "0.7")
    texts = [Image.open(tmp_path / "out" / f"{k:05d}.png").text for k in range(3)]
    assert [t["prompt"] for t in texts] == ["a yellow square", "a red circle", "a blue square above a green triangle"]
    assert texts[0]["negative"] == "blurry" and texts[0]["rescale"] == "0.7"


def test_larger_than_trained_with_tiled_decoding(latent_model, tmp_path):
    sample(latent_model, tmp_path / "tiled", "--n", "1", "--height", "32", "--width", "48", "--steps", "1", "--tile", "8")
    sample(latent_model, tmp_path / "whole", "--n", "1", "--height", "32", "--width", "48", "--steps", "1", "--tile", "0")
    tiled, whole = pixels(tmp_path / "tiled" / "00000.png"), pixels(tmp_path / "whole" / "00000.png")
    assert tiled.shape == whole.shape == (32, 48, 3)
    assert not np.array_equal(tiled, whole)  # the tiles did run: seams blend, they are not bit-identical


def digit_image(path, size=16):
    arr = np.zeros((size, size, 3), np.uint8)
    arr[3:-3, size // 2 - 2 : size // 2 + 2] = 255
    arr[3:5, 4:-4] = 200
    Image.fromarray(arr).save(path)
    return path


def test_inpainting_keeps_the_unmasked_pixels_of_a_pixel_space_model(class_model, tmp_path):
    init = digit_image(tmp_path / "init.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for name in ("ddim", "dpmpp_2m_sde"):
        sample(class_model, tmp_path / name, "--class", "4", "--n", "2", "--steps", "3", "--sampler", name,
               "--init", init, "--mask", tmp_path / "mask.png")
        out, ref = pixels(tmp_path / name / "00001.png"), pixels(init)
        assert np.array_equal(out[:, 8:], ref[:, 8:]), name
        assert not np.array_equal(out[:, :8], ref[:, :8]), name


def test_inpainting_in_latent_space_keeps_the_known_latents(latent_model, tmp_path):
    """The kept latents come out as the init image encodes (to float rounding); in pixels the kept region is then the
    autoencoder's reconstruction, up to what the decoder mixes in from the generated part (this random-weight
    decoder's GroupNorms see the whole latent), so it is far closer to it than a free sample is."""
    from ldmcli.diffusion import model as M
    from ldmcli.pipeline import Pipeline, Settings

    size = 32
    init = digit_image(tmp_path / "init.png", size)
    mask = np.zeros((size, size), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    x = torch.from_numpy(pixels(init)).permute(2, 0, 1)[None].float() / 127.5 - 1
    region = torch.from_numpy(mask > 0)[None, None]
    model = M.load(latent_model)
    pipe = Pipeline(model, Settings(height=size, width=size), torch.device("cpu"))
    known = pipe.encode(x)
    recon = ((pipe.decode(known)[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    for name in ("euler_a", "plms"):
        pipe = Pipeline(model, Settings(sampler=name, steps=3, height=size, width=size), torch.device("cpu"))
        pipe.decode = lambda z: z  # look at the latents themselves
        z = pipe([None, None], [0, 1], x, region)
        assert torch.allclose(z[..., 4:], known[..., 4:].expand(2, -1, -1, -1), atol=1e-5), name  # columns 0-3 are generated
        assert not torch.allclose(z[..., :4], known[..., :4].expand(2, -1, -1, -1), atol=0.1)
    sample(latent_model, tmp_path / "out", "--n", "1", "--steps", "3", "--init", init, "--mask", tmp_path / "mask.png")
    sample(latent_model, tmp_path / "free", "--n", "1", "--steps", "3", "--height", str(size), "--width", str(size))
    kept = np.s_[:, 16:]
    out_err = np.abs(pixels(tmp_path / "out" / "00000.png")[kept] - recon[kept]).mean()
    free_err = np.abs(pixels(tmp_path / "free" / "00000.png")[kept] - recon[kept]).mean()
    assert out_err < 0.7 * free_err


def test_img2img_strength_sets_how_far_from_the_init_image(class_model, tmp_path):
    init = digit_image(tmp_path / "init.png")
    errs = []
    for strength in ("0.4", "1"):
        sample(class_model, tmp_path / strength, "--class", "1", "--n", "2", "--steps", "5", "--init", init, "--strength", strength)
        assert Image.open(tmp_path / strength / "00000.png").text["strength"] == strength
        errs.append(np.abs(pixels(tmp_path / strength / "00000.png") - pixels(init)).mean())
    assert errs[0] < errs[1]
    odd = digit_image(tmp_path / "odd.png", 17)  # sides rounded down to the UNet's multiple of 2
    sample(class_model, tmp_path / "odd", "--class", "1", "--n", "1", "--steps", "2", "--init", odd)
    assert Image.open(tmp_path / "odd" / "00000.png").size == (16, 16)


@pytest.mark.parametrize("model,args,message", [
    ("class_model", ["--sampler", "dpm3"], "unknown sampler 'dpm3' (choose from ddpm, ddim, plms"),
    ("class_model", ["--class", "10"], "--class 10 is out of range: this model has classes 0..9"),
    ("class_model", ["--prompt", "a cat"], "this model is class-conditional: use --class"),
    ("class_model", ["--sampler", "ddim", "--karras"], "--karras needs a sigma-based sampler"),
    ("class_model", ["--sampler", "heun", "--eta", "0.5"], "--eta needs a stochastic sampler (ddim, dpmpp_2m_sde, euler_a), not heun"),
    ("class_model", ["--strength", "0.5"], "--strength and --mask need --init IMAGE"),
    ("latent_model", ["--prompt", "a cat"], "this model is unconditional: it takes no --prompt"),
    ("latent_model", ["--height", "30"], "--height 30 is not a positive multiple of 4 (the latent factor 2 x the UNet's 2)"),
    ("latent_model", ["--cfg", "3"], "--cfg needs a class- or text-conditional model"),
    ("text_model", [], "this model is text-conditional: give --prompt TEXT or --prompts FILE"),
])
def test_bad_options_are_one_line_errors(request, tmp_path, model, args, message):
    result = run_cli("sample", "--model", request.getfixturevalue(model), "--out", tmp_path, "--steps", "2", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
