"""The FID Inception network: torch-fidelity's module with weights that we read, never unpickle.

torch-fidelity's FeatureExtractorInceptionV3 always loads its own weights, with a full (code-running)
unpickle of whatever path it is given. We read the user's file ourselves
(safetensors, or torch.load(weights_only=True)), check it holds only tensors, and hand the library an
in-memory copy that we serialised from those tensors: its unpickler then sees nothing but our bytes.
pytorch-fid's file (`pt_inception-...`) and torch-fidelity's (`weights-inception-...`) hold the same
566 tensors under the same names, so either one works.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ldmcli.errors import UserError
from ldmcli.weights import read_state_dict

FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
FIDELITY_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_DIMS = (64, 192, 768, 2048)


def default_inception_path() -> Path:
    """$TORCH_HOME/hub/checkpoints/pt_inception-..., where pytorch-fid keeps the file (or torch-fidelity's name)."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    ours, theirs = checkpoints / FILE_NAME, checkpoints / FIDELITY_FILE_NAME
    return theirs if theirs.is_file() and not ours.is_file() else ours


def resolve_inception_weights(path: Path | None) -> Path:
    """The weights file to use, or one message naming the file and where to put it."""
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"Inception weights not found: {path}")
        return Path(path)
    default = default_inception_path()
    if not default.is_file():
        raise UserError(
            f"FID/KID/IS need the Inception weights {FILE_NAME} (pytorch-fid's port of TF inception-2015-12-05; "
            f"torch-fidelity's {FIDELITY_FILE_NAME} is the same file): put it at {default} or pass --inception-weights PATH"
        )
    return default


def load_inception(path: Path | None, features: list[str], device: torch.device) -> torch.nn.Module:
    """torch-fidelity's Inception returning `features` (e.g. ["2048", "logits_unbiased"]) for uint8 images."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = resolve_inception_weights(path)
    state = read_state_dict(weights, "Inception weights")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", features, feature_extractor_weights_path=buffer)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"{weights} is not the FID Inception (pt_inception-2015-12-05): {first}") from None
    return model.to(device)
