"""Offline domain metrics: a classifier trained by `ldm train-classifier` as the feature network.

No Inception weights can be downloaded here, and Inception's ImageNet features say little about
16-pixel digits anyway. A classifier trained on the domain gives FID/KID in its pooled-feature space
("FID-digits") and, for class-conditional samples, the accuracy with which it recognises the class the
sample was asked for, next to its accuracy on real held-out images (the ceiling samples can reach).
The space is named after the classifier's weights, so saved statistics stay tied to that classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ldmcli.classifier import KIND, Classifier, ClassifierRecipe
from ldmcli.metrics.features import FeatureSpace
from ldmcli.modeldir import load_weights, read_model_config, weights_id


def to_classifier_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 Bx3xHxW -> [-1, 1] floats at the classifier's training size (centre square, antialiased bicubic)."""
    x = images.float() / 127.5 - 1
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    return x


def classifier_space(model_dir: Path, device: torch.device) -> FeatureSpace:
    """Pooled features and class logits of the classifier in `model_dir` (EMA weights when saved)."""
    recipe = read_model_config(model_dir, ClassifierRecipe, KIND)
    model = Classifier(recipe.model)
    load_weights(model, model_dir)
    model.to(device).eval()
    size = recipe.data.size

    def embed(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_classifier_input(images, size)
        features = model.embed(x)
        return {"features": features, "logits": model.head(features)}

    return FeatureSpace(f"classifier-{weights_id(model_dir)}", embed)

