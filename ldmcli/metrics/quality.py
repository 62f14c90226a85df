"""Sample-quality figures from feature matrices: FID and KID (ours), Inception Score and
precision/recall (torch-fidelity's functions on our features), in one dict for `ldm eval --json`.

The reference side is either features (images were given) or saved statistics (an npz): statistics
carry only mu and sigma, so they serve FID alone; KID and precision/recall need the reference images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldmcli.errors import UserError
from ldmcli.metrics.fid import feature_statistics, frechet_distance, kernel_distance


@dataclass(frozen=True)
class Wanted:
    fid: bool = False
    kid: bool = False
    isc: bool = False
    prc: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    isc_splits: int = 10
    prc_neighborhood: int = 3
    seed: int = 2020

    @property
    def needs_reference(self) -> bool:
        return self.fid or self.kid or self.prc


def sample_metrics(samples: np.ndarray, wanted: Wanted, ref: np.ndarray | None = None, ref_stats=None, logits: np.ndarray | None = None) -> dict:
    """Figures for samples (N x D features) against reference features or (mu, sigma); `logits` for IS."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    result: dict = {}
    if wanted.fid:
        mu, sigma = feature_statistics(samples)
        ref_mu, ref_sigma = ref_stats if ref_stats is not None else feature_statistics(ref)
        result["fid"] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
    if (wanted.kid or wanted.prc) and ref is None:
        raise UserError("--kid and --prc need reference images for --ref, not saved statistics (those give FID only)")
    if wanted.kid:
        size = min(wanted.kid_subset_size, len(samples), len(ref))
        result["kid_mean"], result["kid_std"] = kernel_distance(samples, ref, wanted.kid_subsets, size, wanted.seed)
        result["kid_subset_size"] = size
    if wanted.isc:
        if len(logits) < wanted.isc_splits:
            raise UserError(f"Inception Score in {wanted.isc_splits} splits needs at least that many images, got {len(logits)}")
        isc = isc_features_to_metric(torch.from_numpy(logits), splits=wanted.isc_splits, shuffle=True, rng_seed=wanted.seed)
        result["isc_mean"], result["isc_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if wanted.prc:
        if min(len(samples), len(ref)) <= wanted.prc_neighborhood:
            raise UserError(f"precision/recall with k = {wanted.prc_neighborhood} needs more than {wanted.prc_neighborhood} images on each side")
        prc = prc_features_to_metric(
            torch.from_numpy(samples).float(), torch.from_numpy(ref).float(),
            prc_neighborhood=wanted.prc_neighborhood, prc_batch_size=10000, save_cpu_ram=False, verbose=False,
        )
        result["precision"], result["recall"], result["f_score"] = prc["precision"], prc["recall"], prc["f_score"]
    return result
