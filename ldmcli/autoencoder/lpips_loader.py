"""LPIPS (Zhang et al. 2018) with its ImageNet backbone loaded from a local file, never downloaded.

The lpips package ships only its linear heads; the backbone comes from torchvision's cache, which
cannot be filled here. We build the backbone empty and load the user's file (safetensors, or a .pth
read with `weights_only=True`), so a missing file is one clear message at start, not a failed download.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ldmcli.errors import UserError
from ldmcli.weights import read_state_dict

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def default_weights_path(net: str) -> Path:
    """Where torchvision (and so lpips) looks: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def resolve_weights(net: str, path: str | Path | None) -> Path:
    """The backbone file to load, or a UserError that names it and where to put it."""
    if net not in BACKBONE_FILES:
        raise UserError(f"LPIPS net must be one of {', '.join(BACKBONE_FILES)}, got '{net}'")
    if path:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"LPIPS backbone weights not found: {path}")
        return path
    path = default_weights_path(net)
    if not path.is_file():
        raise UserError(
            f"LPIPS needs the torchvision {net} backbone weights '{BACKBONE_FILES[net]}': put the file in "
            f"{path.parent} (or $TORCH_HOME/hub/checkpoints) or pass --lpips-weights PATH, "
            "or train without LPIPS (--set loss.perceptual=none)"
        )
    return path


def load_lpips(net: str = "alex", weights: str | Path | None = None) -> nn.Module:
    """A frozen LPIPS module in eval mode; call it on images in [-1, 1], it returns (B, 1, 1, 1)."""
    import lpips

    path = resolve_weights(net, weights)
    state = read_state_dict(path, "LPIPS backbone weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    # torchvision's `features.<i>.` becomes lpips' `slice<k>.<i>.`, i being the layer's index in features.
    where = {idx: name for name, block in model.net.named_children() for idx, _ in block.named_children()}
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[1] in where:
            mapped[f"{where[parts[1]]}.{parts[1]}.{'.'.join(parts[2:])}"] = value
    expected = set(model.net.state_dict())
    if set(mapped) != expected:
        missing = sorted(expected - set(mapped))[:3]
        raise UserError(f"{path} is not a torchvision {net} checkpoint (missing {', '.join(missing)})")
    try:
        model.net.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit the {net} backbone: {str(err).splitlines()[-1].strip()[:200]}") from None
    return model.eval().requires_grad_(False)
