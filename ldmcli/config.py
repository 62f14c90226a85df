"""Typed configuration: dataclasses per stage, TOML recipes, `--set a.b=value` overrides.

A recipe is data, never code. Unknown keys are an error that names the key and the closest valid one,
because a typo in a week-long run's recipe should fail in the first second, not silently do nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ldmcli.errors import UserError

CONFIG_FORMAT_VERSION = 1


@dataclass
class DataConfig:
    """Where training images or latents come from and how they are prepared."""

    shards: list[str] = field(default_factory=list)
    size: int = 64
    crop: Literal["random", "center"] = "random"
    flip: bool = True
    rotate: bool = False
    shuffle_buffer: int = 1000
    num_workers: int = 2
    epoch_samples: int = 20000


@dataclass
class TrainConfig:
    """Everything the one training loop needs, whatever the model."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    ema_decay: float = 0.0
    ema_warmup: bool = True
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    sample_every: int = 0
    ckpt_every: int = 500
    keep_ckpts: int = 3
    max_bad_steps: int = 20


def _closest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"'{where}' must be a table, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if origin is Literal:
        if value not in args:
            raise UserError(f"'{where}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"'{where}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"'{where}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"'{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"'{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"'{where}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {where}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"unknown config key '{prefix}{key}'{_closest(key, fields)}")
        default = _default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = {**to_dict(default), **value}
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    """A field's default, so that a recipe class's own defaults for a section survive a partial override."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def to_dict(obj: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, sets: typing.Sequence[str]) -> dict:
    """Apply `a.b=value` overrides (value in TOML syntax, bare words as strings) to a nested dict."""
    for expr in sets:
        if "=" not in expr:
            raise UserError(f"--set expects KEY=VALUE, got '{expr}'")
        path, _, raw = expr.partition("=")
        keys = path.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {path}: '{key}' is not a table")
        node[keys[-1]] = _parse_value(raw.strip())
    return data


def read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"recipe {path} is not valid TOML: {err}") from None


def load_recipe(cls: type, path: Path | None, sets: typing.Sequence[str] = ()) -> Any:
    """Recipe file (optional) + overrides -> typed config."""
    data = read_toml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, sets))


def save_config(obj: Any, path: Path, kind: str) -> None:
    """Write a resolved config with its kind and format version, so a dir can be rebuilt from it."""
    payload = {"kind": kind, "format_version": CONFIG_FORMAT_VERSION, "config": to_dict(obj)}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def load_config(cls: type, path: Path, kind: str) -> Any:
    """Read a config.json written by save_config, refusing the wrong kind or a newer format."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no config.json in {path.parent} (is it a model or run dir?)")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or "config" not in payload:
        raise UserError(f"{path} is not an ldmcli config")
    if payload.get("kind") != kind:
        raise UserError(f"{path.parent} holds a '{payload.get('kind')}', expected a '{kind}'")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise UserError(f"{path} has format version {version}; this ldmcli reads up to {CONFIG_FORMAT_VERSION}, upgrade ldmcli")
    return from_dict(cls, payload["config"])
