"""Frechet distance, KID and feature statistics: the arithmetic behind FID/KID in any feature space.

The Frechet distance follows pytorch-fid (scipy's sqrtm of sigma1 @ sigma2, retried with eps on the
diagonals when the product is singular, small imaginary parts dropped), so figures are comparable with
published ones. KID is the unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, averaged over
random equal-size subsets drawn as torch-fidelity draws them (same seed, same order), so our KID equals
torch-fidelity's on the same features. Statistics files use pytorch-fid's npz layout (`mu`, `sigma`) plus
a `features` string naming the feature space, so a reference computed once can be reused and a mismatch
(Inception 2048 vs a classifier) is caught instead of giving a meaningless number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import linalg

from ldmcli.errors import UserError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, float64) covariance of an N x D feature matrix."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise UserError(f"need at least 2 images for feature statistics, got {features.shape[0] if features.ndim == 2 else 0}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise UserError(f"feature statistics differ in shape: {mu1.shape} / {sigma1.shape} vs {mu2.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer images than dimensions) has no stable root: regularise both factors.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = np.max(np.abs(covmean.imag))
            raise UserError(f"FID is numerically unstable (imaginary component {worst:.3g}); use more images than feature dimensions")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 of two equal-size sets with k(a, b) = (a.b / d + coef0)^degree (diagonals left out
    of the within-set sums, kept in the cross term, as Binkowski et al. and torch-fidelity do)."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_distance(features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """KID: mean and std of the polynomial MMD^2 over `subsets` random subsets of `subset_size` from each set."""
    n1, n2 = len(features1), len(features2)
    if subset_size < 2 or n1 < subset_size or n2 < subset_size:
        raise UserError(f"KID subset size {subset_size} needs at least that many images on each side (have {n1} and {n2}), and at least 2")
    features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for i in range(subsets):
        a = features1[rng.choice(n1, subset_size, replace=False)]
        b = features2[rng.choice(n2, subset_size, replace=False)]
        values[i] = polynomial_mmd2(a, b)
    return float(values.mean()), float(values.std())


def save_statistics(path: Path, mu: np.ndarray, sigma: np.ndarray, features: str) -> None:
    """pytorch-fid's npz (mu, sigma) with the name of the feature space beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, mu=mu, sigma=sigma, features=np.array(features))


def load_statistics(path: Path, features: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mu and sigma from an npz (ours or pytorch-fid's); `features`, when the file names its space, must match."""
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
            stored = str(data["features"]) if "features" in data.files else None
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is not a statistics file with mu and sigma (pytorch-fid npz): {err}") from None
    if features is not None and stored is not None and stored != features:
        raise UserError(f"{path} holds statistics of '{stored}' features, this run measures '{features}'")
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return mu, sigma
