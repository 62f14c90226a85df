"""A detector for `shapes` scenes that needs no learning: what a prompt-adherence judge looks at.

Scenes are solid shapes from a known palette on a plain background, drawn anti-aliased. Each pixel is
read as a mix of the background and one palette colour, p = bg + a (c - bg): the colour whose line
through the background fits the pixel best names it, and a is its coverage. Generated scenes are
shaded: a decoder paints a shape darker inside and tints its rim towards a neighbouring palette colour,
so pixels that fit loosely join the closely fitting blob they touch, and a patch mostly bordered by a
larger one is part of it. Connected pixels of one colour are one object; summing coverage gives
sub-pixel area and extents, so shape descriptors hold at 6 pixels a side: the area over (widest row x
tallest column) is 1 for a square, pi/4 for a circle and 1/2 for a triangle, and only a triangle's
coverage is lopsided along an axis (skewness -0.57). Size, position and relations use the vocabulary
of ldmcli.data.shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ldmcli.data.shapes import COLORS, POSITIONS, SIZES

_PALETTE = np.array(list(COLORS.values()), dtype=np.float64)
_NAMES = list(COLORS)
_MIN_COVERAGE = 0.25  # a pixel less covered than this is left to the background
_MAX_RESIDUAL = 40.0  # RGB distance from the background-to-colour line still read as that colour
# A fully covered pixel may stray further, up to this share of its distance from the background, if it
# joins a blob of pixels that fit a colour closely: a decoder paints orange (245, 124, 20) as (206, 90, 0)
# inside its shapes, 45 off orange's line and closer to red's than that, yet part of an orange shape.
_MAX_RELATIVE_RESIDUAL = 0.2
_FRAGMENT_CONTACT = 1 / 3  # share of a patch's outline along a larger patch that makes it part of that shape
# A pixel may lie past the palette colour on its line from the background (a decoder that overshoots
# gives (200, 0, 0) for red (220, 38, 38)): up to this far it is still that colour, fully covered.
_MAX_OVERSHOOT = 1.5
_MIN_AREA = 0.004  # of the image: smaller blobs are noise (a small triangle covers 0.02)
_SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2


@dataclass
class Detection:
    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]  # bounding-box centre (sub-pixel, from coverage), fractions of the image (x, y)
    area: float  # covered pixels
    fill: float  # area / (widest row x tallest column)
    skew: float  # skewness of the coverage along the more lopsided axis
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 fractions of the image: the centre +- half the widest row and tallest column


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median of the border pixels: shapes keep clear of the edges, so the border is background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def _colour_map(image: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the best-fitting palette colour (-1: background) and its coverage."""
    p = image.astype(np.float64) - bg  # H x W x 3
    d = _PALETTE - bg  # K x 3
    alpha = np.clip(np.einsum("hwc,kc->hwk", p, d) / (d * d).sum(1), 0, _MAX_OVERSHOOT)
    residual = np.linalg.norm(p[:, :, None, :] - alpha[..., None] * d, axis=-1)
    best = residual.argmin(-1)
    coverage = np.minimum(np.take_along_axis(alpha, best[..., None], -1)[..., 0], 1.0)
    fit = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    covered = coverage >= _MIN_COVERAGE
    strict = covered & (fit <= _MAX_RESIDUAL)
    loose = covered & (fit <= np.maximum(_MAX_RESIDUAL, _MAX_RELATIVE_RESIDUAL * np.linalg.norm(p, axis=-1)))
    colours = np.where(strict, best, -1)
    extra = loose & ~strict
    if extra.any():
        # a loose pixel takes the colour of the nearest close fit in its blob; a blob with none keeps its own best
        blobs, _ = ndimage.label(loose, structure=np.ones((3, 3)))
        anchored = np.bincount(blobs[strict], minlength=blobs.max() + 1) > 0
        inherit, own = extra & anchored[blobs], extra & ~anchored[blobs]
        colours[own] = best[own]
        if inherit.any():
            iy, ix = ndimage.distance_transform_edt(~strict, return_distances=False, return_indices=True)
            colours[inherit] = colours[iy[inherit], ix[inherit]]
    return colours, np.where(loose, coverage, 0.0)


def _merge_fragments(colours: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """A patch of one colour that borders a larger patch of another colour along at least a third of its
    outline is part of that patch's shape: decoders shade a dark orange shape's rim red. Two shapes that
    touch meet along a small part of their outlines and keep their colours."""
    eight = np.ones((3, 3))
    for k in range(len(_NAMES)):
        labels, n = ndimage.label(colours == k, structure=eight)
        for index in range(1, n + 1):
            patch = labels == index
            ring = ndimage.binary_dilation(patch, structure=eight) & ~patch
            around = np.bincount(colours[ring] + 1, minlength=len(_NAMES) + 1)  # slot 0: background
            host = int(around[1:].argmax())
            if host == k or around[1 + host] < _FRAGMENT_CONTACT * ring.sum():
                continue
            hosts, _ = ndimage.label(colours == host, structure=eight)
            touching = np.unique(hosts[ring & (colours == host)])
            if coverage[np.isin(hosts, touching[touching > 0])].sum() > coverage[patch].sum():
                colours[patch] = host
    return colours


def _skewness(profile: np.ndarray) -> float:
    """Third standardised moment of a coverage profile: 0 for a circle or square, -0.57 for a
    triangle standing on its base (mass towards the bottom), whatever its size or sub-pixel offset."""
    t = np.arange(len(profile), dtype=np.float64)
    mass = profile.sum()
    mean = (profile * t).sum() / mass
    var = (profile * (t - mean) ** 2).sum() / mass
    if var < 1e-9:  # a one-pixel line: no spread to be lopsided in
        return 0.0
    return float((profile * (t - mean) ** 3).sum() / mass / var**1.5)


def _classify(fill: float, skew: float, aspect: float) -> str:
    if aspect > 1.5:  # every shape of the vocabulary is as wide as it is tall
        return "other"
    if abs(skew) > 0.3 or fill < 0.64:
        return "triangle"
    return "square" if fill > 0.89 else "circle"


def _nearest_position(x: float, y: float) -> str:
    return min(POSITIONS, key=lambda name: (POSITIONS[name][0] - x) ** 2 + (POSITIONS[name][1] - y) ** 2)


def detect(image: np.ndarray) -> list[Detection]:
    """The objects of an H x W x 3 uint8 scene, largest first."""
    h, w = image.shape[:2]
    colours, coverage = _colour_map(image, background_colour(image))
    colours = _merge_fragments(colours, coverage)
    found = []
    for k, name in enumerate(_NAMES):
        labels, n = ndimage.label(colours == k, structure=np.ones((3, 3)))
        for index in range(1, n + 1):
            a = np.where(labels == index, coverage, 0.0)
            area = a.sum()
            if area < _MIN_AREA * h * w:
                continue
            rows, cols = a.sum(1), a.sum(0)
            fill = area / (rows.max() * cols.max())
            skew_y, skew_x = _skewness(rows), _skewness(cols)
            skew = max(skew_y, skew_x, key=abs)
            shape = _classify(fill, skew, max(rows.max(), cols.max()) / min(rows.max(), cols.max()))
            cx = ((cols * np.arange(w)).sum() / area + 0.5) / w
            cy = ((rows * np.arange(h)).sum() / area + 0.5) / h
            if shape == "triangle":  # its centroid sits a sixth of its height off the box centre, towards the base
                if abs(skew_y) >= abs(skew_x):
                    cy += np.sign(skew_y) * cols.max() / 6 / h
                else:
                    cx += np.sign(skew_x) * rows.max() / 6 / w
            side = np.sqrt(rows.max() * cols.max() / (h * w))
            half_w, half_h = rows.max() / 2 / w, cols.max() / 2 / h
            bbox = (float(cx - half_w), float(cy - half_h), float(cx + half_w), float(cy + half_h))
            found.append(Detection(shape, name, "large" if side > _SIZE_SPLIT else "small", _nearest_position(cx, cy), (cx, cy), float(area),
                                   float(fill), skew, bbox))
    return sorted(found, key=lambda d: -d.area)


def relation_holds(a: Detection, word: str, b: Detection, tolerance: float = 0.02) -> bool:
    """Whether `a` is `word` ("above", "below", "to the left of", "to the right of") `b`, by the rule
    captions are written with: on that side, along the axis where they are further apart. Within
    `tolerance` (a fraction of the image) of the diagonal both axes count: the pixels cannot tell."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if word in ("above", "below"):
        return (dy < 0) == (word == "above") and abs(dy) >= abs(dx) - tolerance
    if word in ("to the left of", "to the right of"):
        return (dx < 0) == (word == "to the left of") and abs(dx) >= abs(dy) - tolerance
    raise ValueError(f"unknown relation {word!r}")
