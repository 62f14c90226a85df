"""Super-resolution and trained inpainting (the UNet sees extra image channels): the inputs both tasks
build, tiled denoising, `ldm train-diffusion --task`, `ldm upscale`, `ldm sample --init --mask` with an
inpainting model, and the one-line errors for wrong inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_cli, train
from PIL import Image
from safetensors.torch import load_file, save_file
from test_bad_input import one_error_line

from ldmcli.diffusion import model as M
from ldmcli.diffusion.degrade import back_project, bicubic_down, blind_down
from ldmcli.diffusion.image_cond import TaskConfig, inpaint_inputs, sr_inputs, training_inputs
from ldmcli.diffusion.masks import random_masks
from ldmcli.diffusion.tiled import tiled_denoiser
from ldmcli.errors import UserError
from ldmcli.pipeline import Pipeline, Settings, paste_known


@pytest.fixture(scope="module")
def sr_model(tmp_path_factory, digits_shards):
    return train(tmp_path_factory, digits_shards, "--task", "sr", "--set", "task.noise_levels=50", "--set", "task.degradation=blind")


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory, digits_shards):
    return train(tmp_path_factory, digits_shards, "--task", "inpaint")


def save(path, arr):
    Image.fromarray(arr).save(path)
    return path


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_degradations_shrink_by_the_scale_and_blind_ones_follow_the_generator():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert bicubic_down(x, 4).shape == (3, 3, 8, 8)
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(bicubic_down(flat, 4), flat[..., :8, :8], atol=1e-5)  # a flat image stays flat
    a, b = (blind_down(x, 4, torch.Generator().manual_seed(1)) for _ in range(2))
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, blind_down(x, 4, torch.Generator().manual_seed(2)))


def test_training_masks_are_binary_and_mix_small_large_empty_and_full():
    masks = random_masks(400, 32, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    share = masks.mean(dim=(1, 2, 3))
    assert (share == 0).any() and (share == 1).any()
    partial = share[(share > 0) & (share < 1)]
    assert partial.min() < 0.15 and partial.max() > 0.5  # boxes and strokes, and large irregular regions


def test_inputs_of_both_tasks_sit_on_the_latent_grid():
    low = torch.rand(2, 3, 4, 4) * 2 - 1
    assert sr_inputs(low, (4, 4))["concat"] is low  # already the latent size: untouched
    noisy = sr_inputs(low, (8, 8), torch.tensor([0, 49]))
    assert noisy["concat"].shape == (2, 3, 8, 8) and noisy["level"].tolist() == [0, 49]
    image, mask = torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1
    seen = []
    out = inpaint_inputs(image, mask, lambda x: seen.append(x) or x[:, :, ::4, ::4] * 2)
    assert torch.equal(seen[0][:, :, :8], torch.zeros(2, 3, 8, 16)) and torch.equal(seen[0][:, :, 8:], image[:, :, 8:])
    assert out["concat"].shape == (2, 4, 4, 4) and out["concat"][:, 0, :2].eq(1).all() and out["concat"][:, 0, 2:].eq(0).all()
    z, extra, shown = training_inputs(TaskConfig(kind="sr", scale=2), image, lambda x: x[:, :, ::2, ::2])
    assert z.shape == (2, 3, 8, 8) and extra["concat"].shape == (2, 3, 8, 8) and shown.shape == (2, 3, 8, 8)


def test_tiled_denoising_blends_tiles_back_into_the_whole():
    """A pointwise denoiser gives the same canvas however it is tiled: the ramps' weights sum right."""
    x = torch.randn(2, 3, 24, 40)
    seen = []

    def for_window(win):
        seen.append(win)
        return lambda xt, t: xt * 2

    ticks = []
    denoise, tiles = tiled_denoiser(for_window, x.shape, 16, 4, 2, on_tile=lambda: ticks.append(1))
    assert tiles == len(seen) > 1
    assert torch.allclose(denoise(x, torch.tensor([5, 5])), x * 2, atol=1e-5)
    assert len(ticks) == tiles
    assert all(h == 16 and w == 16 and top % 2 == 0 and left % 2 == 0 for top, left, h, w in seen)


def test_pasting_back_keeps_pixels_beyond_the_feather_exact():
    init, images = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 6:10, 6:10] = 1
    out = paste_known(images, init, mask, feather=2)
    assert out[..., 6:10, 6:10].eq(1).all() and out[..., :2, :].eq(0).all() and out[..., 14:, :].eq(0).all()
    assert 0 < out[0, 0, 5, 8] < 1  # blended next to the mask


def test_upscale_makes_images_four_times_larger_in_tiles(sr_model, tmp_path):
    save(tmp_path / "a.png", rgb(10, 13))
    save(tmp_path / "b.png", rgb(4, 4, 1))
    result = run_cli("upscale", tmp_path / "a.png", tmp_path / "b.png", "--model", sr_model, "--out", tmp_path / "up",
                     "--steps", "3", "--tile", "8", "--noise-level", "10")
    assert result.exit_code == 0, result.output
    a, b = Image.open(tmp_path / "up" / "a.png"), Image.open(tmp_path / "up" / "b.png")
    assert a.size == (52, 40) and b.size == (16, 16)
    assert a.text["scale"] == "4" and a.text["noise_level"] == "10" and a.text["source"].endswith("a.png")
    folder = run_cli("upscale", tmp_path / "up", "--model", sr_model, "--out", tmp_path / "up2", "--steps", "2", "--tile", "0",
                     "--sampler", "ddim", "--eta", "0.5")
    assert folder.exit_code == 0, folder.output
    b2 = Image.open(tmp_path / "up2" / "b.png")
    assert b2.size == (64, 64) and b2.text["sampler"] == "ddim" and b2.text["eta"] == "0.5"


def test_residual_sr_targets_the_difference_from_the_upsampled_input():
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    task = TaskConfig(kind="sr", scale=4, residual=True, residual_scale=5.0)
    z, extra, low = training_inputs(task, image, lambda x: x)
    up = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.allclose(z, (image - up) * 5.0, atol=1e-6)
    assert torch.equal(extra["concat"], up)  # the input on the latent grid, as without the residual


def test_residual_sr_measures_its_scale_and_adds_the_input_back(digits_shards, tmp_path):
    """With its last layer's weights zeroed and its bias at 0.2 x residual_scale, an x0-predicting
    residual model predicts the same detail everywhere, so `ldm upscale` must give the bicubic upsampling
    of the input plus 0.2: the residual is unscaled and the input's latent added back after sampling."""
    run = tmp_path / "run"
    result = run_cli("train-diffusion", digits_shards, "--out", run, *TINY, "--task", "sr", "--set", "task.residual=true",
                     "--set", "schedule.prediction=x0")
    assert result.exit_code == 0, result.output
    task = json.loads((run / "model" / "config.json").read_text())["config"]["task"]
    assert task["residual"] and task["residual_scale"] > 1  # the residual is smaller than the image
    for name in ("model.safetensors", "ema.safetensors"):
        weights = load_file(run / "model" / name)
        for k, v in weights.items():
            if "conv_out.weight" in k:
                v.zero_()
            if "conv_out.bias" in k:
                v.fill_(0.2 * task["residual_scale"])
        save_file(weights, run / "model" / name)
    low = np.random.default_rng(0).integers(60, 190, (6, 7, 3), dtype=np.uint8)
    save(tmp_path / "low.png", low)
    result = run_cli("upscale", tmp_path / "low.png", "--model", run / "model", "--out", tmp_path / "up", "--steps", "3", "--tile", "0")
    assert result.exit_code == 0, result.output
    x = torch.from_numpy(low).permute(2, 0, 1)[None].float() / 127.5 - 1
    up = (F.interpolate(x, size=(24, 28), mode="bicubic", align_corners=False).clamp(-1, 1) + 0.2).clamp(-1, 1)
    want = ((up[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    got = np.asarray(Image.open(tmp_path / "up" / "low.png").convert("RGB")).astype(np.float64)
    assert np.abs(got - want).max() <= 2
    one_error_line(run_cli("upscale", tmp_path / "low.png", "--model", run / "model", "--input-guidance", "2"),
                   "--input-guidance needs a super-resolution model trained with noise levels (task.noise_levels)")


def test_upscale_refuses_what_the_model_cannot_do(sr_model, inpaint_model, tmp_path):
    image = save(tmp_path / "a.png", rgb(8, 8))
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--scale", "2"), "trained for x4, not x2")
    one_error_line(run_cli("upscale", image, "--model", inpaint_model), "trained for task 'inpaint', not super-resolution")
    one_error_line(run_cli("upscale", tmp_path / "missing.png", "--model", sr_model), "no such image or folder")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--noise-level", "50"), "--noise-level must lie in [0, 49]")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--eta", "0.5"), "--eta needs a stochastic sampler (ddim, dpmpp_2m_sde, euler_a), not dpmpp_2m")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--sampler", "ddim", "--eta", "1.5"), "--eta must be in [0, 1], got 1.5")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    one_error_line(run_cli("upscale", tmp_path / "bad.png", "--model", sr_model), "cannot read input image")
    one_error_line(run_cli("sample", "--model", sr_model), "use ldm upscale")


def test_input_guidance_extrapolates_from_the_input_told_noisy(sr_model):
    """Scale 0 is the model told its input is noisy at the guidance level (the same noise draw as
    --noise-level), scale 1 the plain model. One DDIM step returns the clean-sample estimate, linear in a v
    network's output, so (where nothing clips) scale 2 is exactly 2 x plain - weak. A guidance interval
    guides the one step when it runs at t = 999 (trailing spacing), not when at t = 0 (linspace)."""
    model = M.load(sr_model, torch.device("cpu"))
    low = torch.rand(2, 3, 4, 4) * 2 - 1

    def up(steps=1, spacing="linspace", **kw):
        settings = Settings(sampler="ddim", steps=steps, spacing=spacing, guidance=1.0, **kw)
        return Pipeline(model, settings, torch.device("cpu"))([None], [0, 1], low=low)

    plain, weak, bold = up(), up(input_guidance=0.0, guidance_level=30), up(input_guidance=2.0, guidance_level=30)
    assert torch.allclose(weak, up(noise_level=30), atol=1e-5)
    assert not torch.allclose(weak, plain, atol=1e-3)
    inside = (torch.stack([plain, weak, bold]).abs() < 0.999).all(0)
    assert inside.float().mean() > 0.5
    assert torch.allclose(bold[inside], (2 * plain - weak)[inside], atol=1e-4)
    assert torch.equal(up(steps=3, input_guidance=1.0, guidance_level=30), up(steps=3))
    assert torch.equal(up(input_guidance=2.0, guidance_level=30, guidance_from=0.5), plain)
    late = {"spacing": "trailing", "input_guidance": 2.0, "guidance_level": 30}
    bold_late, plain_late = up(**late), up(spacing="trailing")
    assert not torch.equal(bold_late, plain_late)
    assert torch.equal(up(**late, guidance_from=0.5), bold_late) and torch.equal(up(**late, guidance_from=0.9999), plain_late)


def test_upscale_with_input_guidance_records_it(sr_model, inpaint_model, tmp_path):
    image = save(tmp_path / "a.png", rgb(6, 5))
    result = run_cli("upscale", image, "--model", sr_model, "--out", tmp_path / "up", "--steps", "2", "--input-guidance", "2",
                     "--guidance-from", "0.5")
    assert result.exit_code == 0, result.output
    meta = Image.open(tmp_path / "up" / "a.png").text
    assert meta["input_guidance"] == "2" and meta["guidance_level"] == "49" and meta["guidance_from"] == "0.5"
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--input-guidance", "2", "--guidance-from", "1"),
                   "--guidance-from must be in [0, 1), got 1")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--input-guidance", "-1"), "--input-guidance must be >= 0, got -1")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--input-guidance", "2", "--noise-level", "20", "--guidance-level", "20"),
                   "--guidance-level must lie in [21, 49] (above --noise-level 20), got 20")
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--input-guidance", "2", "--guidance-level", "50"), "got 50")
    recommended = tmp_path / "recommended"
    shutil.copytree(sr_model, recommended)
    config = json.loads((recommended / "config.json").read_text())
    config["config"]["task"] |= {"input_guidance": 1.5, "guidance_from": 0.25}
    (recommended / "config.json").write_text(json.dumps(config))
    assert run_cli("upscale", image, "--model", recommended, "--out", tmp_path / "up2", "--steps", "2").exit_code == 0
    defaults = Image.open(tmp_path / "up2" / "a.png").text
    assert defaults["input_guidance"] == "1.5" and defaults["guidance_from"] == "0.25"  # the model's defaults
    with pytest.raises(UserError, match="needs a super-resolution model trained with noise levels"):
        Pipeline(M.load(inpaint_model, torch.device("cpu")), Settings(input_guidance=2.0), torch.device("cpu"))


def test_back_projection_makes_the_shrink_the_input_and_keeps_the_detail():
    """The antialiased bicubic x4 shrink cancels a Nyquist checkerboard exactly, so back-projecting an image
    whose low band is wrong must fix the low band (its shrink converges to the input) and leave the checkerboard."""
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    smooth = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False) * 0.8 + 0.1
    checker = 0.2 * (-1.0) ** (torch.arange(32)[:, None] + torch.arange(32)[None, :])
    shrunk = bicubic_down(checker.expand(1, 3, 32, 32), 4).abs()
    assert shrunk[..., 2:-2, 2:-2].max() < 1e-6 and shrunk.max() < 2e-3  # the border's truncated kernels nearly
    image = smooth + checker
    misses = [(bicubic_down(back_project(image, low, 4, k), 4) - low).abs().max().item() for k in (0, 1, 3, 10, 30)]
    assert misses == sorted(misses, reverse=True) and misses[0] > 0.05 and misses[-1] < 1e-3
    kept = (back_project(image, low, 4, 30) * checker).mean() / checker.pow(2).mean()
    assert kept == pytest.approx(1, abs=0.05)


def test_upscale_back_projects_onto_the_input(sr_model, inpaint_model, tmp_path):
    pixels = np.random.default_rng(0).integers(60, 190, (8, 8, 3), dtype=np.uint8)  # a shrink that needs no clipping to reach
    image = save(tmp_path / "a.png", pixels)
    low = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1

    def miss(folder, *args):
        result = run_cli("upscale", image, "--model", sr_model, "--out", tmp_path / folder, "--steps", "2", *args)
        assert result.exit_code == 0, result.output
        png = Image.open(tmp_path / folder / "a.png")
        out = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        return (bicubic_down(out, 4) - low).abs().mean().item(), png.text

    plain, plain_meta = miss("plain")
    projected, meta = miss("projected", "--back-projection", "30")
    assert projected < 0.005 and plain > 0.1 and "back_projection" not in plain_meta and meta["back_projection"] == "30"
    recommended = tmp_path / "recommended"
    shutil.copytree(sr_model, recommended)
    config = json.loads((recommended / "config.json").read_text())
    config["config"]["task"]["back_projection"] = 10
    config["config"]["sampling"] = {"sampler": "ddim", "steps": 1}
    (recommended / "config.json").write_text(json.dumps(config))
    for args, want in (((), "10"), (("--noise-level", "10"), None), (("--noise-level", "10", "--back-projection", "3"), "3")):
        result = run_cli("upscale", image, "--model", recommended, "--out", tmp_path / "rec", *args)
        assert result.exit_code == 0, result.output
        assert "ddim, 1 steps" in result.output  # the model's sampler
        assert Image.open(tmp_path / "rec" / "a.png").text.get("back_projection") == want  # the model's default, for clean inputs
    one_error_line(run_cli("upscale", image, "--model", sr_model, "--back-projection", "-1"), "--back-projection must be >= 0, got -1")
    with pytest.raises(UserError, match="--back-projection needs a super-resolution model"):
        Pipeline(M.load(inpaint_model, torch.device("cpu")), Settings(back_projection=2), torch.device("cpu"))


def inpaint(model, tmp_path, h, w, region, *args):
    """`ldm sample --init --mask` on a random h x w picture with `region` masked; returns the init's path."""
    init = save(tmp_path / "init.png", rgb(h, w))
    mask = np.zeros((h, w), np.uint8)
    mask[region] = 255
    save(tmp_path / "mask.png", mask)
    result = run_cli("sample", "--model", model, "--init", init, "--mask", tmp_path / "mask.png", "--out", tmp_path / "out", *args)
    assert result.exit_code == 0, result.output
    return init


def test_inpainting_model_fills_the_mask_and_keeps_the_rest(inpaint_model, tmp_path):
    init = inpaint(inpaint_model, tmp_path, 16, 16, np.s_[4:10, 4:10], "--n", "2", "--steps", "3")
    out = np.asarray(Image.open(tmp_path / "out" / "00001.png")).astype(int)
    ref = np.asarray(Image.open(init)).astype(int)
    far = np.ones((16, 16), bool)
    far[0:14, 0:14] = False  # the mask grown by the 4-pixel feather
    assert np.array_equal(out[far], ref[far])
    assert np.abs(out[4:10, 4:10] - ref[4:10, 4:10]).mean() > 10
    one_error_line(run_cli("sample", "--model", inpaint_model, "--n", "1"), "inpainting model: give --init IMAGE and --mask MASK")


def test_inpainting_beyond_the_training_size_runs_in_tiles(inpaint_model, tmp_path):
    init = inpaint(inpaint_model, tmp_path, 40, 48, np.s_[10:30, 20:40], "--n", "1", "--steps", "2", "--tile", "16")
    out = np.asarray(Image.open(tmp_path / "out" / "00000.png")).astype(int)
    assert out.shape == (40, 48, 3)
    assert np.array_equal(out[:5], np.asarray(Image.open(init))[:5].astype(int))


@pytest.mark.parametrize("mask, needle", [
    (np.zeros((8, 8), np.uint8), "is 8x8 but --init is 16x16"),
    (np.stack([np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8), np.zeros((16, 16), np.uint8)], -1), "not single-channel"),
    (np.full((16, 16), 128, np.uint8), "not a 0/1 mask (100% of its pixels are grey)"),
])
def test_bad_masks_are_one_line_errors(inpaint_model, tmp_path, mask, needle):
    init = save(tmp_path / "init.png", rgb(16, 16))
    save(tmp_path / "mask.png", mask)
    one_error_line(run_cli("sample", "--model", inpaint_model, "--init", init, "--mask", tmp_path / "mask.png"), needle)


def test_image_tasks_need_image_shards_and_a_known_task(tmp_path, digits_shards):
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--task", "colourise", *TINY), "unknown --task 'colourise'")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--task", "sr", "--set", "task.scale=1", *TINY),
                   "task.scale must be at least 2")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--set", "task.residual=true", *TINY),
                   "task.residual is for super-resolution")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--task", "sr", "--set", "task.input_guidance=2", *TINY),
                   "task.input_guidance 2 needs task.kind = 'sr' with noise levels and a value >= 0 (1: off)")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--task", "sr", "--set", "task.guidance_from=1.5", *TINY),
                   "task.guidance_from must be in [0, 1), got 1.5")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--set", "sampling.sampler=ddpn", *TINY),
                   "sampling.sampler must be one of")
    one_error_line(run_cli("train-diffusion", digits_shards, "--out", tmp_path / "r", "--task", "sr", "--set", "task.degradation=blind",
                           "--set", "task.back_projection=10", *TINY),
                   "task.back_projection 10 needs task.kind = 'sr' with the bicubic degradation")
