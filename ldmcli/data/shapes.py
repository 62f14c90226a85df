"""`shapes`: procedurally drawn scenes of 1-3 coloured shapes with a caption that matches the pixels.

Every attribute (shape, colour, size, position, bounding box) is known, so a generated image can later
be checked against its prompt. Scenes are drawn at 4x and downscaled for anti-aliased edges. Bounding
boxes are pixel (x0, y0, x1, y1) in the output image with x1, y1 exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ldmcli.data.shards import encode_png
from ldmcli.errors import UserError

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 78, 220),
    "yellow": (240, 196, 15),
    "purple": (140, 50, 180),
    "orange": (245, 124, 20),
}
SIZES = {"small": 0.2, "large": 0.32}
POSITIONS = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}
_JITTER = 0.03
_MARGIN = 0.02
_SUPERSAMPLE = 4
_MAX_DRAWS = 10000  # scenes drawn before a hold-out list is declared impossible to satisfy


def layout(rng: np.random.Generator, n: int) -> list[dict]:
    """n shapes in distinct regions with distinct colours, bounding squares not touching."""
    while True:
        positions = [list(POSITIONS)[i] for i in rng.choice(len(POSITIONS), n, replace=False)]
        colors = [list(COLORS)[i] for i in rng.choice(len(COLORS), n, replace=False)]
        items = []
        for position, color in zip(positions, colors):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            size = list(SIZES)[int(rng.integers(len(SIZES)))]
            cx, cy = (c + rng.uniform(-_JITTER, _JITTER) for c in POSITIONS[position])
            items.append({"shape": shape, "color": color, "size": size, "position": position, "center": (cx, cy)})
        if all(not _touch(a, b) for i, a in enumerate(items) for b in items[i + 1 :]):
            return items


def parse_hold_out(text: str) -> list[tuple[str, str]]:
    """'purple triangle, yellow square' -> [('purple', 'triangle'), ('yellow', 'square')]."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        words = item.split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise UserError(f"hold-out pair '{item}' is not 'COLOUR SHAPE' with a colour of {', '.join(COLORS)} "
                            f"and a shape of {', '.join(SHAPES)}")
        pairs.append((words[0], words[1]))
    return pairs


def _touch(a: dict, b: dict) -> bool:
    reach = (SIZES[a["size"]] + SIZES[b["size"]]) / 2 + _MARGIN
    return abs(a["center"][0] - b["center"][0]) < reach and abs(a["center"][1] - b["center"][1]) < reach


def _outline(item: dict, scale: float) -> tuple[str, list[float]]:
    """Shape kind and its corner coordinates at `scale` pixels per unit."""
    half = SIZES[item["size"]] / 2
    cx, cy = item["center"]
    x0, y0, x1, y1 = ((cx - half) * scale, (cy - half) * scale, (cx + half) * scale, (cy + half) * scale)
    if item["shape"] == "triangle":
        return "polygon", [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    return ("ellipse" if item["shape"] == "circle" else "rectangle"), [x0, y0, x1, y1]


def _bbox(item: dict, size: int) -> list[int]:
    half = SIZES[item["size"]] / 2
    cx, cy = item["center"]
    box = [math.floor((cx - half) * size), math.floor((cy - half) * size), math.ceil((cx + half) * size), math.ceil((cy + half) * size)]
    return [min(max(v, 0), size) for v in box]


def relation(a: dict, b: dict) -> str:
    """Where `a` is relative to `b`, along the axis where they are further apart."""
    dx = a["center"][0] - b["center"][0]
    dy = a["center"][1] - b["center"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _phrase(item: dict) -> str:
    return f"a {item['size']} {item['color']} {item['shape']}"


def caption(items: list[dict]) -> str:
    """One shape: 'a large red circle on the left'; two: 'a large red circle above a small blue square';
    three: each shape with its position, joined by commas and 'and'."""
    if len(items) == 1:
        return f"{_phrase(items[0])} {POSITION_WORDS[items[0]['position']]}"
    if len(items) == 2:
        return f"{_phrase(items[0])} {relation(items[0], items[1])} {_phrase(items[1])}"
    parts = [f"{_phrase(item)} {POSITION_WORDS[item['position']]}" for item in items]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def draw_scene(items: list[dict], background: tuple[int, int, int], size: int) -> Image.Image:
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    for item in items:
        kind, coords = _outline(item, big)
        getattr(draw, kind)(coords, fill=COLORS[item["color"]])
    return canvas.resize((size, size), Image.Resampling.BOX)


def shape_scene(rng: np.random.Generator, size: int, hold_out: Sequence[tuple[str, str]] = ()) -> tuple[Image.Image, str, dict]:
    """One random scene: image, caption, and JSON attributes with each shape's bounding box. A scene that
    shows a held-out (colour, shape) pair is drawn again, so the model never sees that combination."""
    for _ in range(_MAX_DRAWS):
        items = layout(rng, int(rng.integers(1, 4)))
        if not any((item["color"], item["shape"]) in hold_out for item in items):
            break
    else:
        raise UserError(f"no scene without the held-out pairs in {_MAX_DRAWS} draws: hold out fewer pairs")
    tint = rng.integers(-14, 1, size=3)
    background = tuple(int(v) for v in np.array([246, 244, 238]) + tint)
    image = draw_scene(items, background, size)
    text = caption(items)
    meta = {
        "source": "shapes",
        "background": list(background),
        "shapes": [
            {
                "shape": item["shape"],
                "color": item["color"],
                "rgb": list(COLORS[item["color"]]),
                "size": item["size"],
                "position": item["position"],
                "bbox": _bbox(item, size),
            }
            for item in items
        ],
    }
    if len(items) == 2:
        meta["relation"] = relation(items[0], items[1])
    return image, text, meta


def shape_samples(size: int = 64, count: int = 10000, seed: int = 0, split: str = "train",
                  hold_out: Sequence[tuple[str, str]] = ()) -> Iterator[dict]:
    """`count` scenes; sample i depends only on (seed, split, hold_out, i). val scenes use their own stream."""
    split_id = 1 if split == "val" else 0
    hold_out = [tuple(pair) for pair in hold_out]
    for index in range(count):
        image, text, meta = shape_scene(np.random.default_rng([seed, split_id, index]), size, hold_out)
        meta["split"] = split
        yield {"png": encode_png(image), "txt": text, "json": meta}
