"""FID/KID arithmetic against pytorch-fid, torch-fidelity and closed forms; pytorch-fid's npz layout."""

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_kid import kid_features_to_metric

from ldmcli.errors import UserError
from ldmcli.metrics.fid import feature_statistics, frechet_distance, kernel_distance, load_statistics, polynomial_mmd2, save_statistics


def _features(seed, n, d, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


@pytest.mark.parametrize("n", [300, 20])  # 20 < 32 dims: singular covariances take the eps retry
def test_frechet_distance_equals_pytorch_fid(n):
    mu1, s1 = feature_statistics(_features(0, n, 32))
    mu2, s2 = feature_statistics(_features(1, n, 32, shift=0.3))
    ours = frechet_distance(mu1, s1, mu2, s2)
    theirs = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours > 1.0
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # 5 + 1 + 0 + 4
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_mismatched_dimensions():
    with pytest.raises(UserError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_polynomial_mmd2_matches_the_unbiased_estimator_written_out():
    x, y = _features(2, 6, 5).astype(np.float64), _features(3, 6, 5, shift=0.5).astype(np.float64)
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = 6
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert polynomial_mmd2(x, y) == pytest.approx(within - 2 * cross, rel=1e-12)


def test_kernel_distance_equals_torch_fidelity():
    a, b = _features(4, 120, 16), _features(5, 90, 16, shift=0.2)
    mean, std = kernel_distance(a, b, subsets=7, subset_size=50, seed=2020)
    # float64 inputs: torch-fidelity keeps the dtype it is given, we always work in float64
    theirs = kid_features_to_metric(torch.from_numpy(a).double(), torch.from_numpy(b).double(), kid_subsets=7, kid_subset_size=50, rng_seed=2020, verbose=False)
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)
    assert mean > 0.01
    same, _ = kernel_distance(a[:60], a[60:], subsets=7, subset_size=50)
    assert abs(same) < 0.2 * mean  # two halves of one distribution: near zero (unbiased, can go negative)


def test_kernel_distance_needs_enough_images():
    with pytest.raises(UserError, match="subset size 50"):
        kernel_distance(_features(6, 40, 4), _features(7, 60, 4), subset_size=50)


def test_statistics_roundtrip_in_pytorch_fid_layout(tmp_path):
    mu, sigma = feature_statistics(_features(8, 50, 8))
    path = tmp_path / "ref.npz"
    save_statistics(path, mu, sigma, "inception-2048")
    with np.load(path) as f:  # how pytorch-fid reads a statistics file
        np.testing.assert_array_equal(f["mu"][:], mu)
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    back_mu, back_sigma = load_statistics(path, "inception-2048")
    np.testing.assert_array_equal(back_mu, mu)
    with pytest.raises(UserError, match="'inception-2048' features"):
        load_statistics(path, "classifier-abc")
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=mu, sigma=sigma)  # a file written by pytorch-fid itself
    np.testing.assert_array_equal(load_statistics(plain, "classifier-abc")[1], sigma)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="not a statistics file"):
        load_statistics(tmp_path / "bad.npz")
