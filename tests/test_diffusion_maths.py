"""Schedules against diffusers' DDPMScheduler, parametrisation round trips, the objective's weighting."""

import pytest
import torch
from diffusers import DDPMScheduler

from ldmcli.diffusion import parametrization as P
from ldmcli.diffusion.objective import ObjectiveConfig, diffusion_loss, loss_weight, stratified_timesteps
from ldmcli.diffusion.schedule import ScheduleConfig, alphas_cumprod, snr

CASES = [
    ("scaled_linear", 0.00085, 0.012, False),
    ("scaled_linear", 0.0015, 0.0195, False),
    ("linear", 0.0001, 0.02, False),
    ("cosine", 0.0001, 0.02, False),
    ("scaled_linear", 0.00085, 0.012, True),
    ("cosine", 0.0001, 0.02, True),
]
DIFFUSERS_NAME = {"scaled_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("kind,start,end,zero_snr", CASES)
def test_alphas_cumprod_match_diffusers(kind, start, end, zero_snr):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end,
                        beta_schedule=DIFFUSERS_NAME[kind], rescale_betas_zero_snr=zero_snr).alphas_cumprod
    ours = alphas_cumprod(ScheduleConfig(kind=kind, beta_start=start, beta_end=end, zero_terminal_snr=zero_snr))
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    assert (ours - ref.double()).abs().max() < 1e-6
    assert (ours[-1] == 0) == zero_snr


def test_schedule_is_decreasing_and_paper_linear_is_linear_in_sqrt_beta():
    abar = alphas_cumprod(ScheduleConfig(kind="scaled_linear", beta_start=0.0015, beta_end=0.0195))
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    assert torch.all(abar[1:] < abar[:-1])
    root = betas.sqrt()
    assert torch.allclose(root[1:] - root[:-1], (root[1] - root[0]).expand(999), atol=1e-9)
    assert abs(betas[0] - 0.0015) < 1e-12 and abs(betas[-1] - 0.0195) < 1e-10


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_conversions_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    abar = torch.tensor([0.9999, 0.9, 0.5, 0.1, 1e-3, 1e-5], dtype=torch.float64)
    x_t = P.add_noise(x0, eps, abar)
    out = P.target(prediction, x0, eps, abar)
    x0_hat, eps_hat = P.split(prediction, out, x_t, abar)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, eps, atol=1e-9)


def test_v_matches_diffusers_velocity_and_survives_zero_terminal_snr():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    x0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.tensor([0, 10, 500, 999])
    abar = sched.alphas_cumprod[t]
    assert torch.allclose(P.target("v", x0, eps, abar), sched.get_velocity(x0, eps, t), atol=1e-6)
    # at alpha-bar = 0 the sample is pure noise; v still determines x0 and eps exactly
    x0_hat, eps_hat = P.split("v", P.target("v", x0, eps, abar), P.add_noise(x0, eps, abar), abar)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_min_snr_weights_follow_the_closed_forms():
    s = torch.tensor([0.0, 0.5, 5.0, 100.0])
    assert torch.allclose(loss_weight("min_snr", "eps", s, 5.0), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    assert torch.allclose(loss_weight("min_snr", "v", s, 5.0), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 101]))
    assert torch.allclose(loss_weight("min_snr", "x0", s, 5.0), torch.tensor([0.0, 0.5, 5.0, 5.0]))
    assert torch.equal(loss_weight("uniform", "eps", s, 5.0), torch.ones(4))
    assert torch.equal(loss_weight("eps", "eps", s, 5.0), torch.ones(4))


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_eps_weighting_is_the_noise_error_of_any_prediction(prediction):
    """The weighted loss of a v or x0 network equals the squared error of the noise it implies."""
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    abar = torch.tensor([0.999, 0.7, 0.2, 0.01], dtype=torch.float64)
    x_t = P.add_noise(x0, eps, abar.float())
    per_sample = (out - P.target(prediction, x0, eps, abar.float())).square().flatten(1).mean(1)
    weighted = loss_weight("eps", prediction, (abar / (1 - abar)).float(), 5.0) * per_sample
    _, eps_hat = P.split(prediction, out, x_t, abar.float())
    assert torch.allclose(weighted, (eps_hat - eps).square().flatten(1).mean(1), rtol=1e-4)


def test_stratified_timesteps_cover_every_stratum():
    t = stratified_timesteps(50, 1000, torch.device("cpu"))
    assert sorted((t // 20).tolist()) == list(range(50))


def test_perfect_model_has_zero_loss_and_buckets_cover_the_range():
    abar = alphas_cumprod(ScheduleConfig())
    x0 = torch.randn(40, 2, 4, 4)
    captured = {}

    def oracle(x_t, t):
        a, s = P.levels(abar[t].float(), x_t)
        captured["t"] = t
        return (x_t - a * x0) / s  # the true noise

    loss, logs = diffusion_loss(oracle, x0, abar, "eps", ObjectiveConfig(buckets=10))
    assert loss < 1e-6
    assert sorted(logs) == [f"loss_t{k:03d}" for k in range(0, 1000, 100)]
    wrong, _ = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, abar, "eps", ObjectiveConfig(loss="l1"))
    assert 0.7 < wrong < 0.9  # E|N(0,1)| = 0.798


def test_offset_noise_adds_a_per_channel_constant():
    torch.manual_seed(0)
    abar = torch.full((10,), 1e-8, dtype=torch.float64)  # x_t is (almost) the noise itself
    seen = {}
    diffusion_loss(lambda x, t: seen.setdefault("x", x), torch.zeros(64, 3, 8, 8), abar, "eps", ObjectiveConfig(offset_noise=1.0))
    spatial_mean_std = seen["x"].mean((2, 3)).std()
    assert spatial_mean_std > 0.7  # without offset noise it would be 1/8
    assert snr(abar)[0] < 1e-7
