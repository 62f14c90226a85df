"""Conditioners: turn a batch's class labels, captions or layouts into what the UNet consumes.

Each returns a dict with `context` (B, N, D) tokens for cross-attention and/or `y` (B, time_embed_dim)
added to the time embedding. The unconditional input used for classifier-free guidance is part of
each conditioner: the extra null class, the empty caption, or the empty layout (layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmcli import openclip
from ldmcli.data.shapes import COLORS, SHAPES
from ldmcli.errors import UserError
from ldmcli.nn.attention import Attention


@dataclass
class ConditionerConfig:
    """kind: none | class | text (transformer trained with the UNet) | clip (frozen OpenCLIP text tower) |
    layout (boxes, each a label, an optional colour and a position, as tokens; ldmcli/diffusion/layout.py).

    class_target "time" adds the class embedding to the time embedding; "context" gives it as one
    cross-attention token of width `width` (the paper's ImageNet model). For text, `width`, `layers`,
    `heads` and `head_dim` size the encoder; `tokenizer` names the open_clip tokenizer.
    clip_weights is a .safetensors file of an open_clip model's state dict (text keys are enough).
    pooled (text): also add a projection of the caption's end-of-text token to the time embedding, as
    SDXL adds its pooled text embedding: a global path for what the whole image is (colour, object) that
    learns far sooner than cross-attention alone.
    layout: `labels` and `colours` are the vocabularies of the boxes (by default the built-in shapes'),
    at most `max_boxes` boxes per image, each coordinate quantised to `coord_bins` bins; `width`, `layers`,
    `heads` and `head_dim` size its transformer. caption (layout): also read the sample's caption with a
    jointly trained text encoder (sized as for kind text, `pooled` allowed); its tokens follow the boxes'.
    """

    kind: Literal["none", "class", "text", "clip", "layout"] = "none"
    num_classes: int = 10
    class_target: Literal["time", "context"] = "time"
    width: int = 512
    layers: int = 4
    heads: int = 8
    head_dim: int = 64
    max_length: int = 77
    tokenizer: str = "ViT-B-32"
    clip_arch: str = "ViT-H-14"
    clip_weights: str = ""
    clip_layer: Literal["penultimate", "last"] = "penultimate"
    drop_prob: float = 0.1
    pooled: bool = False
    labels: list[str] = field(default_factory=lambda: list(SHAPES))
    colours: list[str] = field(default_factory=lambda: list(COLORS))
    max_boxes: int = 8
    coord_bins: int = 64
    caption: bool = False


class NoConditioner(nn.Module):
    key = None

    def forward(self, cond) -> dict:
        return {}

    def null(self, n: int):
        return None

    def drop(self, cond, dropped: torch.Tensor):
        return cond


class ClassConditioner(nn.Module):
    """An embedding table with one extra row, index num_classes, for "no class"."""

    key = "cls"

    def __init__(self, num_classes: int, dim: int, target: str):
        super().__init__()
        self.num_classes = num_classes
        self.target = target
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> dict:
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = unconditional)")
        emb = self.embedding(labels.long())
        return {"y": emb} if self.target == "time" else {"context": emb[:, None]}

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Nothing to recompute: an embedding lookup keeps no activations worth dropping."""

    def null(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.embedding.weight.device)

    def drop(self, labels: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return labels.masked_fill(dropped.to(labels.device), self.num_classes)


class _Tokenized(nn.Module):
    """Shared by both text conditioners: captions -> token ids of a fixed length."""

    key = "txt"

    def _tokenize(self, texts: list[str], device: torch.device) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=self.max_length).to(device)

    def null(self, n: int) -> list[str]:
        return [""] * n

    def drop(self, texts: list[str], dropped: torch.Tensor) -> list[str]:
        return ["" if d else t for t, d in zip(texts, dropped.tolist())]


class _TextLayer(nn.Module):
    """Pre-norm transformer layer; attention width heads*head_dim may differ from the model width."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, head_dim)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * 4), nn.GELU(), nn.Linear(width * 4, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def run_layers(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`encoder.layers` then `encoder.norm` over tokens, each layer recomputed in the backward pass when the
    encoder has grad checkpointing on and is training."""
    recompute = encoder.grad_checkpointing and encoder.training and torch.is_grad_enabled()
    for layer in encoder.layers:
        x = checkpoint(layer, x, use_reentrant=False) if recompute else layer(x)
    return encoder.norm(x)


class TextConditioner(_Tokenized):
    """A bidirectional transformer trained from scratch with the UNet (the paper's text-to-image model)."""

    def __init__(self, cfg: ConditionerConfig, time_embed_dim: int):
        super().__init__()
        self.tokenizer = openclip.tokenizer(cfg.tokenizer)
        self.max_length = cfg.max_length
        self.token_embedding = nn.Embedding(self.tokenizer.vocab_size, cfg.width)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_length, cfg.width) * 0.01)
        self.layers = nn.ModuleList(_TextLayer(cfg.width, cfg.heads, cfg.head_dim) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.pool_proj = nn.Linear(cfg.width, time_embed_dim) if cfg.pooled else None
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute each layer in the backward pass (the paper's 32-layer encoder needs it on GPUs)."""
        self.grad_checkpointing = enabled

    def forward(self, texts: list[str]) -> dict:
        ids = self._tokenize(texts, self.position_embedding.device)
        x = run_layers(self, self.token_embedding(ids) + self.position_embedding)
        if self.pool_proj is None:
            return {"context": x}
        end = x[torch.arange(len(ids), device=x.device), ids.argmax(-1)]  # end-of-text has the largest id (CLIP's rule)
        return {"context": x, "y": self.pool_proj(end)}


class ClipTextConditioner(_Tokenized):
    """A frozen open_clip text tower; tokens of the last or penultimate layer after ln_final (SD 2)."""

    def __init__(self, cfg: ConditionerConfig):
        super().__init__()
        import open_clip

        model = openclip.create(cfg.clip_arch)
        self.tokenizer = open_clip.get_tokenizer(cfg.clip_arch)
        self.max_length = model.context_length
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.blocks = model.transformer.resblocks[: -1 if cfg.clip_layer == "penultimate" else None]
        self.ln_final = model.ln_final
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        openclip.load_weights(model, Path(cfg.clip_weights), lambda key: key.startswith(openclip.TEXT_KEYS))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipTextConditioner:
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> dict:
        x = self.token_embedding(self._tokenize(texts, self.positional_embedding.device)) + self.positional_embedding
        for block in self.blocks:
            x = block(x, attn_mask=self.attn_mask)
        return {"context": self.ln_final(x)}


def build_conditioner(cfg: ConditionerConfig, time_embed_dim: int) -> nn.Module:
    if cfg.pooled and not (cfg.kind == "text" or (cfg.kind == "layout" and cfg.caption)):
        raise UserError("conditioner.pooled is for the jointly trained text encoder (kind = \"text\", or \"layout\" with caption)")
    if cfg.caption and cfg.kind != "layout":
        raise UserError("conditioner.caption adds a caption to a layout (kind = \"layout\")")
    if cfg.kind == "layout":
        from ldmcli.diffusion.layout import LayoutConditioner  # it builds on this module's text encoder

        return LayoutConditioner(cfg, time_embed_dim)
    if cfg.kind == "none":
        return NoConditioner()
    if cfg.kind == "class":
        return ClassConditioner(cfg.num_classes, time_embed_dim if cfg.class_target == "time" else cfg.width, cfg.class_target)
    if cfg.kind == "text":
        return TextConditioner(cfg, time_embed_dim)
    return ClipTextConditioner(cfg)


def context_dim(cfg: ConditionerConfig) -> int:
    """Width of the context tokens this conditioner gives the UNet (0 when it gives none)."""
    if cfg.kind == "class":
        return cfg.width if cfg.class_target == "context" else 0
    if cfg.kind in ("text", "layout"):
        return cfg.width
    if cfg.kind == "clip":
        import open_clip

        arch = open_clip.get_model_config(cfg.clip_arch)
        if arch is None:
            raise UserError(f"unknown open_clip architecture '{cfg.clip_arch}' (conditioner.clip_arch)")
        return arch["text_cfg"]["width"]
    return 0
