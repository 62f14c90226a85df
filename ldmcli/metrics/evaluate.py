"""`ldm eval` sample metrics end to end: a feature space, samples and reference in, figures out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldmcli.errors import UserError
from ldmcli.metrics.features import FeatureSpace, extract, uint8_batches
from ldmcli.metrics.fid import feature_statistics, load_statistics, save_statistics
from ldmcli.metrics.inception import FEATURE_DIMS, load_inception
from ldmcli.metrics.quality import Wanted, sample_metrics
from ldmcli.train.distributed import DistEnv


def inception_space(weights: Path | None, dims: int, device: torch.device) -> FeatureSpace:
    """The FID Inception's pool features of `dims` channels, with its 1008 unbiased logits for IS."""
    if dims not in FEATURE_DIMS:
        raise UserError(f"--dims must be one of {', '.join(map(str, FEATURE_DIMS))}, got {dims}")
    model = load_inception(weights, [str(dims), "logits_unbiased"], device)

    def embed(images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = model(images)
        return {"features": features, "logits": logits}

    return FeatureSpace(f"inception-{dims}", embed)


@dataclass
class Source:
    """Where images come from and how many to read: shared by the samples and the reference side."""

    batch_size: int
    size: int | None = None
    limit: int = 0
    num_workers: int = 0


def evaluate_samples(
    samples: str,
    ref: str | None,
    space: FeatureSpace,
    wanted: Wanted,
    env: DistEnv,
    source: Source,
    save_stats: Path | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
) -> dict:
    """Figures of `samples` against `ref` (images, or an npz of statistics) in `space`."""
    if ref is None and (wanted.needs_reference or save_stats is not None):
        raise UserError("--fid, --kid, --prc and --save-stats need --ref SHARDS_OR_STATS")
    result: dict = {"features": space.name}

    def features_of(where: str, side: str) -> dict[str, np.ndarray]:
        batches = uint8_batches(where, source.batch_size, source.size, env, source.limit, source.num_workers)
        rows, result[f"{side}skipped"] = extract(batches, space.embed, env, on_batch)
        result[f"{side}images"] = len(rows["features"])
        return rows

    ref_features, ref_stats = None, None
    if ref is not None and ref.endswith(".npz"):
        if save_stats is not None:
            raise UserError("--save-stats saves the statistics of reference images; --ref is already a statistics file")
        ref_stats = load_statistics(Path(ref), space.name)
    elif ref is not None:
        ref_features = features_of(ref, "ref_")
        if save_stats is not None and env.is_main:
            save_statistics(save_stats, *feature_statistics(ref_features["features"]), space.name)
    sample_features = features_of(samples, "")
    result |= sample_metrics(sample_features, wanted, ref_features, ref_stats)
    return result
