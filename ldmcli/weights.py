"""Weight files from a user's path: safetensors, or a legacy pickle read by torch.load(weights_only=True).

Loading a pickle can run code. The weights-only unpickler refuses anything but tensors and plain
containers; its refusal becomes one line that says so, not torch's advice to switch the check off.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ldmcli.errors import UserError


def _unpickler_detail(err: Exception) -> str:
    """The line of torch's message that names what the weights-only unpickler refused."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation")
    return next((ln for ln in lines if not ln.startswith(boilerplate)), type(err).__name__)[:200]


def read_weights(path: Path | str, what: str = "weights") -> object:
    """The object a .safetensors file (a dict of tensors) or a weights-only pickle holds."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"cannot read {what} from {path}: not safetensors, and as a pickle it holds more than plain tensors "
            f"({_unpickler_detail(err)}); ldmcli never unpickles anything else"
        ) from None
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot read {what} from {path}: {first[:200]}") from None


def read_state_dict(path: Path | str, what: str = "weights") -> dict[str, torch.Tensor]:
    """A flat dict of tensors (a checkpoint's "state_dict" entry when it has one); anything else is refused."""
    state = read_weights(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state
