"""A small image classifier trained by the one loop: the training loop's test model today, and the
feature network for offline domain metrics (FID in its feature space, sample accuracy) later."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.config import DataConfig, TrainConfig
from ldmcli.modeldir import save_model_dir
from ldmcli.train.task import TrainTask

KIND = "classifier"


@dataclass
class ClassifierModelConfig:
    num_classes: int = 10
    channels: int = 32
    stages: int = 3
    dropout: float = 0.0


@dataclass
class ClassifierRecipe:
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=32, flip=False))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, steps=500, batch_size=64))


class Classifier(nn.Module):
    """Conv stages (conv-BN-SiLU x2, stride 2 between stages) -> global mean pool -> linear.

    BatchNorm rather than GroupNorm: per-sample normalisation of each channel before the global pool
    erases the channel means that carry the class, and small models then barely learn.
    """

    def __init__(self, cfg: ClassifierModelConfig):
        super().__init__()
        layers, c_in = [], 3
        for i in range(cfg.stages):
            c = cfg.channels * 2**i
            layers += [
                nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(c_in, cfg.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: the space in which domain FID is measured."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


class ClassifierTask(TrainTask):
    required_keys = ("image", "cls")

    def __init__(self, recipe: ClassifierRecipe):
        self.recipe = recipe
        self.models = {"classifier": Classifier(recipe.model)}

    def loss(self, phase, models, batch, step):
        logits = models["classifier"](batch["image"])
        labels = batch["cls"]
        valid = (labels >= 0) & (labels < logits.shape[1])
        loss = F.cross_entropy(logits.float(), labels.masked_fill(~valid, -100), ignore_index=-100)
        accuracy = (logits.argmax(1) == labels)[valid].float().mean()
        return loss, {"accuracy": accuracy.detach(), "bad_labels": float((~valid).sum())}

    def export(self, out_dir: Path, models, ema) -> None:
        save_model_dir(out_dir, KIND, self.recipe, models["classifier"], ema.get("classifier"))
