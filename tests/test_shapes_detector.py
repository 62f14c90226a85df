"""The learning-free shapes detector against rendered ground truth from ldmcli.data.shapes."""

import numpy as np
import pytest

from ldmcli.data.shapes import draw_scene, shape_scene
from ldmcli.metrics.shapes_detector import detect, relation_holds

OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}


def _truth(meta):
    return sorted((s["shape"], s["color"], s["size"], s["position"]) for s in meta["shapes"])


def _found(image):
    return sorted((d.shape, d.color, d.size, d.position) for d in detect(np.asarray(image)))


@pytest.mark.parametrize("size, count", [(64, 600), (32, 400)])
def test_scenes_are_read_exactly_at_least_99_percent(size, count):
    exact, objects, wrong_objects, relations = 0, 0, 0, []
    for i in range(count):
        image, _, meta = shape_scene(np.random.default_rng([11, i]), size)
        truth, found = _truth(meta), _found(image)
        exact += truth == found
        objects += len(truth)
        wrong_objects += len(set(truth) ^ set(found))
        if "relation" in meta:
            by_colour = {d.color: d for d in detect(np.asarray(image))}
            a, b = (by_colour.get(s["color"]) for s in meta["shapes"])
            word = meta["relation"]
            relations.append(a is not None and b is not None and relation_holds(a, word, b) and not relation_holds(a, OPPOSITE[word], b))
    assert exact >= 0.99 * count, f"{exact}/{count} scenes"
    assert wrong_objects <= 0.01 * objects
    assert len(relations) > 0.2 * count and sum(relations) >= 0.99 * len(relations)


def test_mild_noise_is_tolerated():
    rng = np.random.default_rng(0)
    exact = 0
    for i in range(200):
        image, _, meta = shape_scene(np.random.default_rng([12, i]), 64)
        noisy = np.clip(np.asarray(image) + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
        exact += _truth(meta) == _found(noisy)
    assert exact >= 198


def test_counts_same_coloured_objects_and_sees_nothing_on_a_blank_scene():
    items = [
        {"shape": "circle", "color": "red", "size": "small", "center": (0.2, 0.5)},
        {"shape": "circle", "color": "red", "size": "small", "center": (0.8, 0.5)},
        {"shape": "square", "color": "blue", "size": "large", "center": (0.5, 0.8)},
    ]
    found = _found(draw_scene(items, (240, 240, 235), 64))
    assert found == [("circle", "red", "small", "left"), ("circle", "red", "small", "right"), ("square", "blue", "large", "bottom")]
    assert detect(np.full((64, 64, 3), 240, np.uint8)) == []
    alone = detect(np.asarray(draw_scene(items[2:], (200, 210, 220), 64)))  # another background tint
    assert [(d.shape, d.color) for d in alone] == [("square", "blue")]
    bar = np.full((64, 64, 3), 240, np.uint8)
    bar[20:26, 5:60] = (220, 38, 38)
    assert [(d.shape, d.color) for d in detect(bar)] == [("other", "red")]


def _square(rgb, size=64):
    image = np.full((size, size, 3), (240, 238, 232), np.uint8)
    image[20:44, 20:44] = rgb
    return image


def test_a_colour_past_the_palette_is_still_that_colour_and_a_mix_of_two_is_none():
    # a decoder that overshoots red (220, 38, 38) towards (200, 0, 0) still draws a red square
    found = detect(_square((200, 0, 0)))
    assert [(d.color, d.shape) for d in found] == [("red", "square")]
    # a darker, more saturated orange (245, 124, 20), as the demo's latent model paints it, is 45 RGB
    # off orange's line from the background: far, but proportionate to a fully covered pixel
    assert [(d.color, d.shape) for d in detect(_square((206, 90, 0)))] == [("orange", "square")]


def test_a_decoded_shape_shaded_towards_another_colour_is_one_shape_of_its_own_colour():
    # an anti-aliased orange edge, a darker orange inside and a patch that fits red better than orange
    background, orange = np.array((240, 238, 232)), np.array((245, 124, 20))
    image = np.tile(background, (64, 64, 1)).astype(np.uint8)
    image[19:45, 19:45] = (background + orange) // 2
    image[20:44, 20:44] = (206, 90, 0)
    image[28:36, 28:36] = (205, 50, 30)
    assert [(d.color, d.shape) for d in detect(image)] == [("orange", "square")]
    # halfway between red and blue, or a grey, is no palette colour: nothing is detected
    assert detect(_square((128, 58, 129))) == [] and detect(_square((120, 120, 120))) == []
