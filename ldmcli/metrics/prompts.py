"""Prompt adherence on `shapes`, in the spirit of GenEval: prompts written in the training captions'
own grammar, images judged by the learning-free shapes detector.

A prompt is the caption of a random scene, so every prompt is drawable and its wording is one the text
encoder has seen. A prompt is `held_out` when it names a (colour, shape) pair that was left out of the
training data (`ldm data build shapes --hold-out`): the model has seen the colour and the shape, never
together. Categories and what counts as right:
  single_object       the prompted shape is there;
  colour              the prompted shape is there in the prompted colour;
  counting            as many objects as the prompt names (1-3), no more, no fewer;
  two_objects         both prompted shapes are there;
  position            both objects (colour and shape) are there, in the prompted relation;
  colour_attribution  both objects are there, each in its own colour (two different shapes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from ldmcli.data.shapes import caption, layout, relation
from ldmcli.errors import UserError
from ldmcli.metrics.shapes_detector import Detection, detect, relation_holds

CATEGORIES = ("single_object", "colour", "counting", "two_objects", "position", "colour_attribution")
_MAX_DRAWS = 10000
_OBJECTS = {"single_object": 1, "colour": 1, "two_objects": 2, "position": 2, "colour_attribution": 2}


@dataclass
class Prompt:
    category: str
    text: str
    objects: list[dict]  # shape, color, size, position, center of each prompted object
    held_out: bool

    @property
    def relation(self) -> str:
        return relation(self.objects[0], self.objects[1])


def names_pair(objects: list[dict], pairs: list[tuple[str, str]]) -> bool:
    return any((o["color"], o["shape"]) in pairs for o in objects)


def prompt_suite(per_category: int, hold_out: list[tuple[str, str]], seed: int = 0) -> list[Prompt]:
    """`per_category` prompts of each category; with hold-out pairs, half of each category names one."""
    rng = np.random.default_rng(seed)
    suite = []
    for category in CATEGORIES:
        for k in range(per_category):
            want_held = bool(hold_out) and k % 2 == 1
            for _ in range(_MAX_DRAWS):
                n = int(rng.integers(1, 4)) if category == "counting" else _OBJECTS[category]
                objects = layout(rng, n)
                distinct = category != "colour_attribution" or objects[0]["shape"] != objects[1]["shape"]
                if distinct and names_pair(objects, hold_out) == want_held:
                    break
            else:
                raise UserError(f"cannot write {category} prompts that {'name' if want_held else 'avoid'} the held-out pairs: "
                                "hold out fewer pairs")
            suite.append(Prompt(category, caption(objects), objects, want_held))
    return suite


def _find(found: list[Detection], obj: dict, colour: bool = True) -> Detection | None:
    return next((d for d in found if d.shape == obj["shape"] and (not colour or d.color == obj["color"])), None)


def judge(prompt: Prompt, image: np.ndarray) -> bool:
    """Whether an H x W x 3 uint8 image shows what the prompt's category asks about."""
    found = detect(image)
    objs, category = prompt.objects, prompt.category
    if category == "single_object":
        return _find(found, objs[0], colour=False) is not None
    if category == "colour":
        return _find(found, objs[0]) is not None
    if category == "counting":
        return len(found) == len(objs)
    if category == "two_objects":
        shapes = Counter(d.shape for d in found)
        return all(shapes[s] >= k for s, k in Counter(o["shape"] for o in objs).items())
    a, b = _find(found, objs[0]), _find(found, objs[1])
    if a is None or b is None or a is b:
        return False
    return category == "colour_attribution" or bool(relation_holds(a, prompt.relation, b))


def summarise(prompts: list[Prompt], verdicts: list[list[bool]]) -> dict:
    """Accuracy (share of images judged right) per category, split into seen and held-out prompts, and
    the overall mean over categories (GenEval's headline number)."""
    table = {}
    for category in CATEGORIES:
        row = {}
        for split, keep in (("all", lambda p: True), ("seen", lambda p: not p.held_out), ("held_out", lambda p: p.held_out)):
            votes = [v for p, vs in zip(prompts, verdicts) if p.category == category and keep(p) for v in vs]
            row[split] = sum(votes) / len(votes) if votes else None
            row[f"{split}_images"] = len(votes)
        table[category] = row
    overall = [table[c]["all"] for c in CATEGORIES if table[c]["all"] is not None]
    return {"categories": table, "overall": sum(overall) / len(overall) if overall else None}


def prompt_records(prompts: list[Prompt], verdicts: list[list[bool]]) -> list[dict]:
    return [asdict(p) | {"correct": vs} for p, vs in zip(prompts, verdicts)]
