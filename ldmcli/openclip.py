"""OpenCLIP models from a local .safetensors file (nothing is downloaded): the frozen text tower of the
`clip` conditioner and the full model of the CLIP score load through the same checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ldmcli.errors import UserError

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def create(arch: str) -> nn.Module:
    """The architecture with random weights (open_clip's registry, including configs a user added)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise UserError(f"unknown open_clip architecture '{arch}'")
    return open_clip.create_model(arch, pretrained=None)


def load_weights(model: nn.Module, path: Path, wanted: Callable[[str], bool] = lambda key: True) -> None:
    """Load the tensors of `model` whose names `wanted` accepts from `path`; every one must be there
    with the architecture's shape (one clear line otherwise)."""
    if not str(path) or not path.is_file():
        raise UserError(f"OpenCLIP weights not found: '{path}'. Put the model's open_clip_model.safetensors there "
                        "(nothing is downloaded)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a safetensors file: {err}") from None
    full = model.state_dict()
    keys = {k for k in full if wanted(k)}
    missing = sorted(keys - set(state))
    if missing:
        raise UserError(f"{path} lacks {len(missing)} weights of {type(model).__name__} (first: {missing[0]})")
    for key in keys:
        if state[key].shape != full[key].shape:
            raise UserError(f"{path}: '{key}' has shape {tuple(state[key].shape)}, the architecture expects {tuple(full[key].shape)}")
    model.load_state_dict({k: state[k] for k in keys}, strict=False)


def load_model(arch: str, path: Path) -> nn.Module:
    """The whole model (image and text towers), in eval mode."""
    model = create(arch)
    load_weights(model, Path(path))
    return model.eval().requires_grad_(False)
