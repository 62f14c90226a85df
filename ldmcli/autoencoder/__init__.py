"""The perceptual autoencoder (the first stage): model, losses, training task, tiling, loading."""

from __future__ import annotations

from pathlib import Path

import torch

from ldmcli.autoencoder.config import KIND, AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.modeldir import load_weights, read_model_config


def load_autoencoder(model_dir: Path | str, device: torch.device | str = "cpu", use_ema: bool = True) -> Autoencoder:
    """An autoencoder model dir (from `ldm train-ae` or `ldm convert`) -> eval-mode model on `device`."""
    cfg = read_model_config(Path(model_dir), AutoencoderConfig, KIND)
    model = Autoencoder(cfg)
    load_weights(model, Path(model_dir), use_ema=use_ema)
    return model.to(device).eval().requires_grad_(False)
