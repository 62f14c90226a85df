"""Layout adherence on `shapes`: how well the objects found in an image by the learning-free shapes
detector land in the boxes that were asked for.

Each requested box takes a detection of its own: one of the same shape and colour if there is one (the
one that overlaps it most), else the unused detection that overlaps it most; a box that overlaps no
detection is missed (IoU 0). Boxes are compared on the pixel grid: the detector's sub-pixel box is
rounded outwards as the shapes set rounds its `bbox`, so a rendered scene scores about 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ldmcli.diffusion.layout import Box
from ldmcli.metrics.shapes_detector import Detection


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def on_grid(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A fractional box rounded outwards to whole pixels of a width x height image (1e-6 absorbs float
    error at pixel edges)."""
    x0, y0, x1, y1 = box
    return (math.floor(x0 * width + 1e-6) / width, math.floor(y0 * height + 1e-6) / height,
            math.ceil(x1 * width - 1e-6) / width, math.ceil(y1 * height - 1e-6) / height)


def match(boxes: Sequence[Box], found: Sequence[Detection], width: int, height: int) -> list[dict]:
    """Per requested box: its IoU with the detection matched to it, and whether that detection has the
    box's shape and (when one was asked for) its colour."""
    free = list(found)
    records = []
    for box in boxes:
        same = [d for d in free if d.shape == box.label and (box.colour is None or d.color == box.colour)]
        scored = sorted(((iou(box.box, on_grid(d.bbox, width, height)), k) for k, d in enumerate(same or free)), reverse=True)
        best = scored[0] if scored and (same or scored[0][0] > 0) else None
        if best is None:
            records.append({"iou": 0.0, "found": False, "shape": False, "colour": False if box.colour else None})
            continue
        d = (same or free)[best[1]]
        free.remove(d)
        records.append({"iou": best[0], "found": True, "shape": d.shape == box.label, "colour": d.color == box.colour if box.colour else None})
    return records


def _share(values: Sequence) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(images: Sequence[tuple[Sequence[Box], Sequence[Detection], list[dict]]]) -> dict:
    """Over (requested boxes, detections, match records) per image: mean IoU, the share of boxes with
    IoU >= 0.5, shape and colour right among the boxes, and images with as many objects as boxes."""
    records = [r for _, _, rs in images for r in rs]
    coloured = [r["colour"] for r in records if r["colour"] is not None]
    return {
        "images": len(images),
        "boxes": len(records),
        "mean_iou": _share([r["iou"] for r in records]),
        "iou_50": _share([r["iou"] >= 0.5 for r in records]),
        "shape_correct": _share([r["shape"] for r in records]),
        "colour_correct": _share(coloured),
        "count_correct": _share([len(found) == len(boxes) for boxes, found, _ in images]),
    }
