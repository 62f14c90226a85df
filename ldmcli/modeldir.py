"""Model dirs: config.json (kind + format version) and safetensors weights, nothing unpickled."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ldmcli.config import load_config, save_config
from ldmcli.errors import UserError


def save_model_dir(out_dir: Path, kind: str, config: Any, model: nn.Module, ema: nn.Module | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.json", kind)
    save_model(model, str(out_dir / "model.safetensors"))
    if ema is not None:
        save_model(ema, str(out_dir / "ema.safetensors"))
    return out_dir


def copy_model_dir(src: Path | str, dst: Path | str) -> Path:
    """The files a model dir loads from (config and weights), copied into dst; a file src lacks is
    removed from dst, so a stale ema.safetensors is never loaded in place of the copied weights."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "ema.safetensors"):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)
        else:
            (dst / name).unlink(missing_ok=True)
    return dst


def read_model_config(model_dir: Path, cls: type, kind: str) -> Any:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model dir not found: {model_dir}")
    return load_config(cls, model_dir / "config.json", kind)


def _mismatch(err: RuntimeError) -> str:
    """torch's load_state_dict report (a title line, then one line per kind of problem) as one line."""
    lines = [ln.strip() for ln in str(err).strip().splitlines()]
    details = "; ".join(ln for ln in lines[1:] if ln) or lines[0]
    return details if len(details) <= 300 else details[:297] + "..."


def load_weights(model: nn.Module, model_dir: Path, use_ema: bool = True, device: str = "cpu") -> str:
    """Load ema.safetensors when present and wanted, else model.safetensors; return the file used."""
    model_dir = Path(model_dir)
    path = model_dir / "ema.safetensors"
    if not (use_ema and path.is_file()):
        path = model_dir / "model.safetensors"
    if not path.is_file():
        raise UserError(f"no weights in {model_dir} (expected model.safetensors)")
    try:
        load_model(model, str(path), strict=True, device=device)
    except SafetensorError as err:
        raise UserError(f"{path} is not a safetensors file: {err}") from None
    except RuntimeError as err:
        raise UserError(f"{path} does not match the model in its config.json: {_mismatch(err)}") from None
    return path.name


def weights_id(model_dir: Path | str) -> str:
    """sha256 (first 16 hex digits) of the weights a model dir loads (ema.safetensors when present):
    names a model in PNG metadata and ties latents to the autoencoder that made them."""
    model_dir = Path(model_dir)
    path = model_dir / "ema.safetensors"
    if not path.is_file():
        path = model_dir / "model.safetensors"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
