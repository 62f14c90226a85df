"""The patch discriminator of pix2pix (Isola et al. 2017) that LDM's first stage is trained against.

Each output logit judges one receptive-field patch, so it punishes blur locally rather than judging
the whole image; its intermediate features also serve as a perceptual loss that needs no pretrained
weights (feature matching, Wang et al. 2018).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2))]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                    nn.BatchNorm2d(channels * mult),
                    nn.LeakyReLU(0.2),
                )
            )
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv2d(channels * mult, 1, 4, 1, 1)
        self.apply(_init)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch logits (B, 1, h, w); with `features`, also each layer's activations."""
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        logits = self.head(x)
        return (logits, feats) if features else logits


def _init(m: nn.Module) -> None:
    """pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
