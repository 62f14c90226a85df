"""Layout-to-image conditioning, as in the paper's layout-to-image model (Sec. 4.3.1): each box becomes one
token, the sum of embeddings of its label, its colour ("unknown" when not given) and its four coordinates
quantised to `coord_bins` bins; a small transformer lets the tokens see each other and the UNet reads them
by cross-attention. Tokens carry no slot index, so the order of the boxes does not matter. Slots past the
last box hold one learned padding token; the empty layout (all padding) is the unconditional input of
classifier-free guidance. With `caption`, a jointly trained text encoder's tokens follow the boxes'.

A layout is written as JSON, a list of {"label", "colour" (optional), "box": [x0, y0, x1, y1]} with
coordinates as fractions of the image (0..1, x1 > x0, y1 > y0): what `ldm sample --layout` reads, and what
a training sample's json may hold under "layout". The built-in shapes' json ("shapes", pixel "bbox") is
read too, at the training image size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldmcli.diffusion.conditioning import ConditionerConfig, TextConditioner, _TextLayer, run_layers
from ldmcli.errors import UserError

FORMAT = 'a list of {"label", "colour" (optional), "box": [x0, y0, x1, y1] in 0..1}'
_FORGET_COLOUR = 0.2  # share of training boxes shown without their colour, so that "unknown colour" is learnt


@dataclass(frozen=True)
class Box:
    label: str
    colour: str | None
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image

    def to_json(self) -> dict:
        return {"label": self.label} | ({"colour": self.colour} if self.colour else {}) | {"box": [round(v, 4) for v in self.box]}


@dataclass(frozen=True)
class Layout:
    """One image's condition: its boxes and, for a model that also reads captions, its caption."""

    boxes: tuple[Box, ...] = ()
    caption: str = ""

    def to_json(self) -> str:
        return json.dumps([b.to_json() for b in self.boxes])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_box(item, labels: Sequence[str], colours: Sequence[str], where: str) -> Box:
    """One box of the JSON format, checked against the model's vocabularies."""
    if not isinstance(item, dict):
        raise UserError(f"{where} is not an object ({FORMAT})")
    unknown = sorted(set(item) - {"label", "colour", "color", "box"})
    if unknown:
        raise UserError(f"{where} has unknown key '{unknown[0]}' (keys: label, colour, box)")
    label = item.get("label")
    if not isinstance(label, str) or label not in labels:
        raise UserError(f"{where}: unknown label {label!r} (this model knows {', '.join(labels)})")
    colour = item.get("colour", item.get("color"))
    if colour is not None and (not isinstance(colour, str) or colour not in colours):
        raise UserError(f"{where}: unknown colour {colour!r} (this model knows {', '.join(colours) or 'none'})")
    box = item.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))):
        raise UserError(f"{where}: box must be [x0, y0, x1, y1], four numbers in 0..1, got {json.dumps(box)}")
    if not all(0 <= v <= 1 for v in box):
        raise UserError(f"{where}: box {box} lies outside 0..1 (coordinates are fractions of the image)")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"{where}: box {box} needs x0 < x1 and y0 < y1")
    return Box(label, colour, (x0, y0, x1, y1))


def parse_layout(data, cfg: ConditionerConfig, where: str) -> tuple[Box, ...]:
    if not isinstance(data, list):
        raise UserError(f"{where} must hold {FORMAT}, got a JSON {type(data).__name__}")
    if len(data) > cfg.max_boxes:
        raise UserError(f"{where} has {len(data)} boxes; this model takes at most {cfg.max_boxes}")
    return tuple(parse_box(item, cfg.labels, cfg.colours, f"{where}: box {i + 1}") for i, item in enumerate(data))


def read_layout(path: Path, cfg: ConditionerConfig) -> Layout:
    """A --layout file, checked against the model's vocabularies and box count."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --layout file {path}: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--layout file {path} is not JSON: {err}") from None
    return Layout(parse_layout(data, cfg, f"--layout file {path}"))


def boxes_of(meta, size: int, cfg: ConditionerConfig) -> tuple[tuple[Box, ...], int]:
    """A sample's boxes from its json ("layout", or the shapes set's "shapes" with pixel bboxes of an image
    `size` pixels wide), and how many it held that cannot be used (unknown label or colour, bad box, past
    max_boxes): those are left out and counted, never ending a run."""
    meta = meta if isinstance(meta, dict) else {}
    items = meta.get("layout")
    if not isinstance(items, list):
        items = []
        for s in meta.get("shapes") or ():
            try:
                items.append({"label": s["shape"], "colour": s.get("color"), "box": [v / size for v in s["bbox"]]})
            except (KeyError, TypeError, AttributeError):
                items.append(None)
    boxes = []
    for item in items:
        try:
            boxes.append(parse_box(item, cfg.labels, cfg.colours, "box"))
        except UserError:
            pass
    kept = tuple(boxes[: cfg.max_boxes])
    return kept, len(items) - len(kept)


def quantise(v: float, bins: int) -> int:
    """A coordinate in 0..1 to its bin: 0 and 1 are the first and last bins."""
    return round(min(max(v, 0.0), 1.0) * (bins - 1))


class LayoutConditioner(nn.Module):
    """Boxes -> `max_boxes` context tokens (followed by the caption's tokens with `caption`)."""

    key = "json"

    def __init__(self, cfg: ConditionerConfig, time_embed_dim: int):
        super().__init__()
        if not cfg.labels:
            raise UserError("conditioner.labels is empty: a layout model needs at least one label")
        if cfg.max_boxes < 1 or cfg.coord_bins < 2:
            raise UserError(f"conditioner.max_boxes must be >= 1 and coord_bins >= 2, got {cfg.max_boxes} and {cfg.coord_bins}")
        self.cfg = cfg
        self.label_index = {name: i for i, name in enumerate(cfg.labels)}
        self.colour_index = {name: i for i, name in enumerate(cfg.colours)}  # len(colours): unknown
        self.label_embedding = nn.Embedding(len(cfg.labels), cfg.width)
        self.colour_embedding = nn.Embedding(len(cfg.colours) + 1, cfg.width)
        self.coord_embedding = nn.Parameter(self._fourier_init(cfg.coord_bins, cfg.width))
        self.pad = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.layers = nn.ModuleList(_TextLayer(cfg.width, cfg.heads, cfg.head_dim) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.label_embedding.weight, std=0.02)
        nn.init.normal_(self.colour_embedding.weight, std=0.02)
        self.text = TextConditioner(cfg, time_embed_dim) if cfg.caption else None
        self.grad_checkpointing = False

    @staticmethod
    def _fourier_init(bins: int, width: int) -> torch.Tensor:
        """(4, bins, width) tables for x0, y0, x1, y1 that start as random Fourier features of the bin's
        position, each coordinate its own frequencies: neighbouring bins start alike, so a box between the
        positions seen in training reads as near them, and x0 never starts out looking like y0."""
        pos = torch.linspace(0, 1, bins)[None, :, None]
        freq, phase = torch.randn(4, 1, width) * 6, torch.rand(4, 1, width) * 2 * math.pi
        return torch.cos(2 * math.pi * freq * pos + phase) * 0.02

    def set_grad_checkpointing(self, enabled: bool) -> None:
        self.grad_checkpointing = enabled
        if self.text is not None:
            self.text.set_grad_checkpointing(enabled)

    def _indices(self, layouts: Sequence[Layout], device: torch.device):
        n, m, bins = len(layouts), self.cfg.max_boxes, self.cfg.coord_bins
        labels = torch.zeros(n, m, dtype=torch.long)
        colours = torch.full((n, m), len(self.cfg.colours), dtype=torch.long)
        coords = torch.zeros(n, m, 4, dtype=torch.long)
        present = torch.zeros(n, m, dtype=torch.bool)
        for i, layout in enumerate(layouts):
            if len(layout.boxes) > m:
                raise ValueError(f"a layout of {len(layout.boxes)} boxes, more than max_boxes = {m}")
            for j, box in enumerate(layout.boxes):
                labels[i, j] = self.label_index[box.label]
                if box.colour is not None:
                    colours[i, j] = self.colour_index[box.colour]
                coords[i, j] = torch.tensor([quantise(v, bins) for v in box.box])
                present[i, j] = True
        return labels.to(device), colours.to(device), coords.to(device), present.to(device)

    def forward(self, layouts: Sequence[Layout]) -> dict:
        labels, colours, coords, present = self._indices(layouts, self.pad.device)
        coord = self.coord_embedding[torch.arange(4, device=coords.device), coords].sum(-2)  # (B, M, width)
        x = self.label_embedding(labels) + self.colour_embedding(colours) + coord
        x = run_layers(self, torch.where(present[..., None], x, self.pad))
        if self.text is None:
            return {"context": x}
        text = self.text([layout.caption for layout in layouts])
        return text | {"context": torch.cat([x, text["context"]], dim=1)}

    def null(self, n: int) -> list[Layout]:
        return [Layout()] * n

    def drop(self, layouts: Sequence[Layout], dropped: torch.Tensor) -> list[Layout]:
        return [Layout() if d else layout for layout, d in zip(layouts, dropped.tolist())]

    def from_batch(self, metas: Sequence, captions: Sequence[str], size: int, train: bool = False) -> tuple[list[Layout], int]:
        """Layouts of a batch's json (and captions) for images `size` pixels wide, and the count of boxes
        left out; in training a share of boxes lose their colour, so a layout without colours works too."""
        layouts, bad = [], 0
        for meta, caption in zip(metas, captions):
            boxes, left_out = boxes_of(meta, size, self.cfg)
            if train:
                forget = (torch.rand(len(boxes)) < _FORGET_COLOUR).tolist()
                boxes = tuple(Box(b.label, None, b.box) if f else b for b, f in zip(boxes, forget))
            layouts.append(Layout(boxes, caption if self.text is not None else ""))
            bad += left_out
        return layouts, bad
