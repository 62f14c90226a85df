"""Autoencoder weights between ldmcli, diffusers (AutoencoderKL, VQModel) and CompVis first stages.

The three layouts hold the same tensors under different names; attention differs in shape only
(ldmcli fuses q, k, v into one 1x1 conv; diffusers uses Linear layers; CompVis separate 1x1 convs).
A name table built from the config drives both directions, so import and export cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldmcli.autoencoder.config import AutoencoderConfig
from ldmcli.autoencoder.model import Autoencoder
from ldmcli.errors import UserError
from ldmcli.weights import read_state_dict

FORMATS = ("diffusers", "compvis")
_RES = {"diffusers": ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"), "compvis": ("norm1", "conv1", "norm2", "conv2", "nin_shortcut")}
_OURS_RES = ("norm1", "conv1", "norm2", "conv2", "skip")


def _modules(cfg: AutoencoderConfig, fmt: str) -> Iterator[tuple[str, str, str]]:
    """(our module path, their module path, kind) for every module with weights."""
    d = fmt == "diffusers"
    n = len(cfg.channel_mult)
    yield "encoder.conv_in", "encoder.conv_in", "plain"
    for i in range(n):
        theirs = f"encoder.down_blocks.{i}" if d else f"encoder.down.{i}"
        for j in range(cfg.num_res_blocks):
            yield f"encoder.down.{i}.blocks.{j}", f"{theirs}.{'resnets' if d else 'block'}.{j}", "res"
            if 2**i in cfg.attn_factors:
                yield f"encoder.down.{i}.attns.{j}", f"{theirs}.{'attentions' if d else 'attn'}.{j}", "attn"
        if i < n - 1:
            yield f"encoder.down.{i}.resample.conv", f"{theirs}.{'downsamplers.0' if d else 'downsample'}.conv", "plain"
    for side in ("encoder", "decoder"):
        mid = f"{side}.mid_block" if d else f"{side}.mid"
        yield f"{side}.mid.block1", f"{mid}.resnets.0" if d else f"{mid}.block_1", "res"
        if cfg.mid_attention:
            yield f"{side}.mid.attn", f"{mid}.attentions.0" if d else f"{mid}.attn_1", "attn"
        yield f"{side}.mid.block2", f"{mid}.resnets.1" if d else f"{mid}.block_2", "res"
    yield "encoder.norm_out", "encoder.conv_norm_out" if d else "encoder.norm_out", "plain"
    yield "encoder.conv_out", "encoder.conv_out", "plain"
    if cfg.quant_conv:
        yield "quant_conv", "quant_conv", "plain"
        yield "post_quant_conv", "post_quant_conv", "plain"
    if cfg.bottleneck == "vq":
        yield "quantize.embedding", "quantize.embedding", "plain"
    yield "decoder.conv_in", "decoder.conv_in", "plain"
    for k in range(n):
        level = n - 1 - k
        theirs = f"decoder.up_blocks.{k}" if d else f"decoder.up.{level}"
        for j in range(cfg.num_res_blocks + 1):
            yield f"decoder.up.{k}.blocks.{j}", f"{theirs}.{'resnets' if d else 'block'}.{j}", "res"
            if 2**level in cfg.attn_factors:
                yield f"decoder.up.{k}.attns.{j}", f"{theirs}.{'attentions' if d else 'attn'}.{j}", "attn"
        if level > 0:
            yield f"decoder.up.{k}.resample.conv", f"{theirs}.{'upsamplers.0' if d else 'upsample'}.conv", "plain"
    yield "decoder.norm_out", "decoder.conv_norm_out" if d else "decoder.norm_out", "plain"
    yield "decoder.conv_out", "decoder.conv_out", "plain"


def _take(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"weights lack '{key}': not an autoencoder of this configuration")
    return state.pop(key)


def _res_pairs(fmt: str, ours: str, theirs: str, state: dict) -> Iterator[tuple[str, str]]:
    """Parameter name pairs of one ResBlock; the skip conv only exists where the width changes."""
    for a, b in zip(_OURS_RES, _RES[fmt]):
        for p in ("weight", "bias"):
            if a != "skip" or f"{theirs}.{b}.{p}" in state:
                yield f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}"


def import_state(state: dict[str, torch.Tensor], cfg: AutoencoderConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Their state dict -> ours (ldmcli's buffers such as VQ usage are left to their defaults)."""
    state = dict(state)
    d = fmt == "diffusers"
    out = {}
    for ours, theirs, kind in _modules(cfg, fmt):
        if kind == "plain":
            for p in ("weight", "bias"):
                if f"{theirs}.{p}" in state:
                    out[f"{ours}.{p}"] = _take(state, f"{theirs}.{p}")
        elif kind == "res":
            for a, b in _res_pairs(fmt, ours, theirs, state):
                out[a] = _take(state, b)
        else:
            names = ("group_norm", "to_q", "to_k", "to_v", "to_out.0") if d else ("norm", "q", "k", "v", "proj_out")
            norm_, q, k, v, proj = (f"{theirs}.{n}" for n in names)
            for p in ("weight", "bias"):
                out[f"{ours}.norm.{p}"] = _take(state, f"{norm_}.{p}")
                out[f"{ours}.proj.{p}"] = _take(state, f"{proj}.{p}")
                out[f"{ours}.qkv.{p}"] = torch.cat([_take(state, f"{n}.{p}") for n in (q, k, v)])
            out[f"{ours}.qkv.weight"] = out[f"{ours}.qkv.weight"].reshape(*out[f"{ours}.qkv.weight"].shape[:2], 1, 1)
            out[f"{ours}.proj.weight"] = out[f"{ours}.proj.weight"].reshape(*out[f"{ours}.proj.weight"].shape[:2], 1, 1)
    return out


def export_state(state: dict[str, torch.Tensor], cfg: AutoencoderConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict -> theirs."""
    d = fmt == "diffusers"
    out = {}
    for ours, theirs, kind in _modules(cfg, fmt):
        if kind == "plain":
            for p in ("weight", "bias"):
                if f"{ours}.{p}" in state:
                    out[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
        elif kind == "res":
            for a, b in zip(_OURS_RES, _RES[fmt]):
                for p in ("weight", "bias"):
                    if f"{ours}.{a}.{p}" in state:
                        out[f"{theirs}.{b}.{p}"] = state[f"{ours}.{a}.{p}"]
        else:
            names = ("group_norm", "to_q", "to_k", "to_v", "to_out.0") if d else ("norm", "q", "k", "v", "proj_out")
            shape = (lambda w: w.flatten(1)) if d else (lambda w: w)
            for p in ("weight", "bias"):
                out[f"{theirs}.{names[0]}.{p}"] = state[f"{ours}.norm.{p}"]
                qkv = state[f"{ours}.qkv.{p}"].chunk(3)
                for name, part in zip(names[1:4], qkv):
                    out[f"{theirs}.{name}.{p}"] = shape(part) if p == "weight" else part
                proj = state[f"{ours}.proj.{p}"]
                out[f"{theirs}.{names[4]}.{p}"] = shape(proj) if p == "weight" else proj
    return {k: v.contiguous() for k, v in out.items()}


def config_from_diffusers(dcfg: dict) -> AutoencoderConfig:
    """An AutoencoderConfig from a diffusers AutoencoderKL/VQModel config.json."""
    cls = dcfg.get("_class_name", "AutoencoderKL" if "num_vq_embeddings" not in dcfg else "VQModel")
    if cls not in ("AutoencoderKL", "VQModel"):
        raise UserError(f"diffusers model class '{cls}' is not supported (AutoencoderKL or VQModel)")
    widths = list(dcfg.get("block_out_channels", [64]))
    base = widths[0]
    if any(w % base for w in widths):
        raise UserError(f"block_out_channels {widths} are not multiples of the first; ldmcli needs channel multipliers")
    if dcfg.get("norm_num_groups", 32) != 32 or dcfg.get("act_fn", "silu") != "silu" or dcfg.get("norm_type", "group") != "group":
        raise UserError("only diffusers autoencoders with 32-group GroupNorm and SiLU (the LDM/SD layout) can be imported")
    if not dcfg.get("use_quant_conv", True) == dcfg.get("use_post_quant_conv", True):
        raise UserError("diffusers autoencoders with only one of quant_conv/post_quant_conv are not supported")
    down = dcfg.get("down_block_types", ["DownEncoderBlock2D"] * len(widths))
    attn = [2**i for i, t in enumerate(down) if t.startswith("Attn")]
    latent = dcfg.get("latent_channels", 4)
    kind = "kl" if cls == "AutoencoderKL" else "vq"
    return AutoencoderConfig(
        bottleneck=kind,
        in_channels=dcfg.get("in_channels", 3),
        channels=base,
        channel_mult=[w // base for w in widths],
        num_res_blocks=dcfg.get("layers_per_block", 1),
        attn_factors=attn,
        mid_attention=dcfg.get("mid_block_add_attention", True),
        z_channels=latent,
        embed_dim=latent if kind == "kl" else dcfg.get("vq_embed_dim") or latent,
        quant_conv=dcfg.get("use_quant_conv", True),
        n_embed=dcfg.get("num_vq_embeddings", 8192),
        scaling_factor=dcfg.get("scaling_factor"),
    )


def config_to_diffusers(cfg: AutoencoderConfig) -> dict:
    if cfg.in_channels != 3 and cfg.bottleneck == "vq":
        raise UserError("diffusers VQModel export supports 3-channel images only")
    n = len(cfg.channel_mult)
    down = ["AttnDownEncoderBlock2D" if 2**i in cfg.attn_factors else "DownEncoderBlock2D" for i in range(n)]
    up = ["AttnUpDecoderBlock2D" if 2 ** (n - 1 - k) in cfg.attn_factors else "UpDecoderBlock2D" for k in range(n)]
    out = {
        "_class_name": "AutoencoderKL" if cfg.bottleneck == "kl" else "VQModel",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [cfg.channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": cfg.z_channels,
        "norm_num_groups": 32,
        "mid_block_add_attention": cfg.mid_attention,
        "scaling_factor": cfg.scaling_factor if cfg.scaling_factor is not None else 1.0,
    }
    if cfg.bottleneck == "kl":
        if cfg.embed_dim != cfg.z_channels:
            raise UserError("diffusers AutoencoderKL needs embed_dim == z_channels")
        out.update(use_quant_conv=cfg.quant_conv, use_post_quant_conv=cfg.quant_conv)
    else:
        if not cfg.quant_conv:
            raise UserError("diffusers VQModel always has quant_conv; this model has none")
        out.update(num_vq_embeddings=cfg.n_embed, vq_embed_dim=cfg.embed_dim, norm_type="group")
    return out


def config_from_compvis(state: dict[str, torch.Tensor]) -> AutoencoderConfig:
    """Infer a CompVis first stage's ddconfig from its tensor shapes (no YAML needed)."""
    try:
        base = state["encoder.conv_in.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
        mult = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // base for i in levels]
        blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
        attn = [2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state]
        z = state["decoder.conv_in.weight"].shape[1]
        enc_out = state["encoder.conv_out.weight"].shape[0]
        vq = "quantize.embedding.weight" in state
        has_qc = "quant_conv.weight" in state
        embed = state["post_quant_conv.weight"].shape[1] if has_qc else z
    except KeyError as err:
        raise UserError(f"not a CompVis first-stage checkpoint: no tensor {err}") from None
    if not vq and enc_out != 2 * z:
        raise UserError("CompVis KL checkpoint without double_z is not supported")
    return AutoencoderConfig(
        bottleneck="vq" if vq else "kl",
        in_channels=state["encoder.conv_in.weight"].shape[1],
        channels=base,
        channel_mult=mult,
        num_res_blocks=blocks,
        attn_factors=attn,
        mid_attention="encoder.mid.attn_1.q.weight" in state,
        z_channels=z,
        embed_dim=embed,
        quant_conv=has_qc,
        n_embed=state["quantize.embedding.weight"].shape[0] if vq else 8192,
    )


def compvis_first_stage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first-stage tensors of a CompVis autoencoder or LDM/SD checkpoint, without the loss's."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def _load_into(cfg: AutoencoderConfig, ours: dict[str, torch.Tensor], source: Path) -> Autoencoder:
    model = Autoencoder(cfg)
    own = model.state_dict()
    # ldmcli-only buffers (VQ code usage, EMA codebook sums) start from their defaults.
    for key in own.keys() - ours.keys():
        if key.startswith("quantize.") and not key.endswith("embedding.weight"):
            ours[key] = own[key]
            if key.endswith("embed_sum"):
                ours[key] = ours["quantize.embedding.weight"].clone()
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise UserError(f"{source} does not fit the inferred configuration: {str(err).splitlines()[1].strip()[:200]}") from None
    return model


def import_autoencoder(source: Path) -> Autoencoder:
    """A diffusers AutoencoderKL/VQModel dir, or a CompVis first-stage / LDM / SD checkpoint file -> our model."""
    source = Path(source)
    if source.is_dir():
        config = source / "config.json"
        if not config.is_file():
            raise UserError(f"{source} is not a diffusers model dir (no config.json)")
        try:
            dcfg = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{config} is not valid JSON: {err}") from None
        if not isinstance(dcfg, dict) or "_class_name" not in dcfg:
            raise UserError(f"{config} is not a diffusers config (no _class_name); ldmcli model dirs need no conversion")
        cfg = config_from_diffusers(dcfg)
        files = [source / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
        weights = next((f for f in files if f.is_file()), None)
        if weights is None:
            raise UserError(f"no diffusion_pytorch_model.safetensors in {source}")
        return _load_into(cfg, import_state(read_state_dict(weights), cfg, "diffusers"), weights)
    if not source.is_file():
        raise UserError(f"not found: {source}")
    state = compvis_first_stage(read_state_dict(source))
    cfg = config_from_compvis(state)
    return _load_into(cfg, import_state(state, cfg, "compvis"), source)


def export_autoencoder(model: Autoencoder, out: Path, fmt: str) -> Path:
    """Write a diffusers model dir (config.json + safetensors) or a CompVis first-stage safetensors file."""
    if model.config.shortcut:
        raise UserError("this autoencoder has residual shortcuts (model.shortcut = true), which the diffusers and CompVis layouts lack")
    state = export_state({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config, fmt)
    out = Path(out)
    if fmt == "diffusers":
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_diffusers(model.config), indent=2) + "\n")
        save_file(state, str(out / "diffusion_pytorch_model.safetensors"))
        return out
    if out.suffix != ".safetensors":
        raise UserError(f"CompVis export writes one .safetensors file; got --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
