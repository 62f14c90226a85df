"""Sample-quality figures from feature matrices: FID and KID (ours), Inception Score and
precision/recall (torch-fidelity's functions on our features), class accuracy, in one dict for `ldm eval --json`.

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
    accuracy: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    isc_splits: int = 10
    prc_neighborhood: int = 3
    seed: int = 2020

    @property
    def needs_reference(self) -> bool:
        return self.fid or self.kid or self.prc


def sample_metrics(sample_rows: dict[str, np.ndarray], wanted: Wanted, ref_rows: dict[str, np.ndarray] | None = None, ref_stats=None) -> dict:
    """Figures for samples against reference rows or (mu, sigma); rows are "features", "logits", "cls"."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    samples, logits = sample_rows["features"], sample_rows["logits"]
    ref = None if ref_rows is None else ref_rows["features"]
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
    if wanted.accuracy:
        result["accuracy"] = classification_accuracy(logits, sample_rows["cls"], "samples")
        if ref_rows is not None and (ref_rows["cls"] >= 0).any():
            result["ref_accuracy"] = classification_accuracy(ref_rows["logits"], ref_rows["cls"], "reference")
    return result


def classification_accuracy(logits: np.ndarray, labels: np.ndarray, what: str) -> float:
    """Share of labelled images (label >= 0) whose arg-max class is their label."""
    labels = labels.astype(np.int64)
    known = labels >= 0
    if not known.any():
        raise UserError(f"--accuracy needs class labels on the {what}: shards with .cls, or PNGs from ldm sample with a class model")
    return float((logits[known].argmax(axis=1) == labels[known]).mean())

