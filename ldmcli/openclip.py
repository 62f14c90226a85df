"""OpenCLIP models from a local .safetensors file (nothing is downloaded): the frozen text tower of the
`clip` conditioner and the full model of the CLIP score load through the same checks. Also open_clip's
tokenizers, which the jointly trained text encoder uses without the rest of the package."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ldmcli.errors import UserError

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def tokenizer(arch: str) -> Callable:
    """open_clip's tokenizer for `arch`. Importing open_clip pulls in torchvision and torch._dynamo (about 4 s
    of every text-to-image command on a 2-core CPU) while the jointly trained text encoder needs only the CLIP
    BPE vocabulary: architectures whose built-in config names no other tokenizer get open_clip's
    SimpleTokenizer from its tokenizer module alone; any other goes through open_clip.get_tokenizer."""
    source = _bpe_source(arch)
    if source is None:
        import open_clip

        return open_clip.get_tokenizer(arch)
    return _bpe_module(str(source)).SimpleTokenizer()


def _bpe_source(arch: str) -> Path | None:
    """open_clip's tokenizer.py when `arch` is a built-in config tokenized by SimpleTokenizer (get_tokenizer's rule)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations or not re.fullmatch(r"[\w.-]+", arch) or "siglip" in arch.lower():
        return None
    root = Path(spec.submodule_search_locations[0])
    config, source = root / "model_configs" / f"{arch}.json", root / "tokenizer.py"
    if not config.is_file() or not source.is_file():
        return None
    text_cfg = json.loads(config.read_text()).get("text_cfg", {})
    return None if text_cfg.get("hf_tokenizer_name") or text_cfg.get("tokenizer_kwargs") else source


@functools.cache
def _bpe_module(path: str):
    spec = importlib.util.spec_from_file_location("ldmcli._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
