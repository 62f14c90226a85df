"""The DDIM sampler and timestep spacings against diffusers' DDIMScheduler on the same model function."""

import pytest
import torch
from diffusers import DDIMScheduler

from ldmcli.diffusion.samplers import sample_ddim, spaced_timesteps
from ldmcli.diffusion.schedule import ScheduleConfig, alphas_cumprod


def toy_model(x, t):
    """A deterministic, non-linear function of x and t standing in for a trained network."""
    return torch.tanh(x * 0.7 + 0.3) * (0.5 + t.float()[:, None, None, None] / 1000)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 50])
def test_spacings_match_diffusers(spacing, steps):
    ref = DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert spaced_timesteps(1000, steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("prediction,ref_name", [("eps", "epsilon"), ("v", "v_prediction")])
@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_trajectory_matches_diffusers(prediction, ref_name, steps):
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=ref_name,
                          set_alpha_to_one=True, timestep_spacing="leading", clip_sample=False)
    sched.set_timesteps(steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = x.clone()
    for t in sched.timesteps:
        ref = sched.step(toy_model(ref, t.expand(2)), t, ref).prev_sample
    abar = alphas_cumprod(ScheduleConfig(kind="scaled_linear", beta_start=0.00085, beta_end=0.012))
    ours = sample_ddim(toy_model, x, spaced_timesteps(1000, steps, "leading"), abar, prediction)
    assert (ours - ref).abs().max() < 1e-4


def test_eta_one_draws_noise_from_the_generator_and_reproduces():
    abar = alphas_cumprod(ScheduleConfig())
    x = torch.randn(1, 3, 4, 4)
    ts = spaced_timesteps(1000, 5)
    run = lambda seed: sample_ddim(toy_model, x, ts, abar, eta=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert torch.equal(sample_ddim(toy_model, x, ts, abar), sample_ddim(toy_model, x, ts, abar))


def test_callback_sees_every_step():
    seen = []
    abar = alphas_cumprod(ScheduleConfig())
    sample_ddim(toy_model, torch.randn(1, 1, 2, 2), [999, 500, 0], abar, callback=lambda i, t, x, x0: seen.append((i, t)))
    assert seen == [(0, 999), (1, 500), (2, 0)]
