"""Prompt adherence: the suite, the judge (validated on rendered ground truth and on wrong images), shapes
data with held-out pairs, and `ldm eval --prompts` end to end on a tiny text model."""

import json
import tarfile

import numpy as np
import pytest
from conftest import run_cli

from ldmcli.data.shapes import COLORS, draw_scene
from ldmcli.metrics.prompts import CATEGORIES, judge, prompt_suite, summarise

BG = (244, 242, 236)
HOLD = [("purple", "triangle"), ("yellow", "square")]


def render(objects, size=64):
    return np.asarray(draw_scene(objects, BG, size))


def test_the_judge_passes_at_least_99_percent_of_rendered_prompts_in_every_category():
    prompts = prompt_suite(100, HOLD, seed=3)
    verdicts = [[judge(p, render(p.objects))] for p in prompts]
    table = summarise(prompts, verdicts)["categories"]
    for category in CATEGORIES:
        assert table[category]["all"] >= 0.99, (category, table[category])
        assert table[category]["seen_images"] == table[category]["held_out_images"] == 50


def test_held_out_prompts_name_a_held_out_pair_and_seen_ones_never_do():
    prompts = prompt_suite(10, HOLD, seed=0)
    assert len(prompts) == 10 * len(CATEGORIES)
    for p in prompts:
        named = {(o["color"], o["shape"]) for o in p.objects}
        assert bool(named & set(HOLD)) == p.held_out
    assert [p.text for p in prompts] == [p.text for p in prompt_suite(10, HOLD, seed=0)]
    assert all(p.objects[0]["shape"] != p.objects[1]["shape"] for p in prompts if p.category == "colour_attribution")
    assert not any(p.held_out for p in prompt_suite(4, [], seed=0))


def _first(category, **want):
    return next(p for p in prompt_suite(60, [], seed=1) if p.category == category
                and all(p.objects[0][k] == v for k, v in want.items()))


def test_the_judge_rejects_wrong_colours_counts_positions_and_swapped_colours():
    p = _first("colour")
    other = next(c for c in COLORS if c != p.objects[0]["color"])
    assert judge(p, render(p.objects))
    assert not judge(p, render([p.objects[0] | {"color": other}]))
    assert not judge(p, np.full((64, 64, 3), BG, np.uint8))

    p = _first("counting")
    extra = prompt_suite(60, [], seed=2)
    scene = next(q.objects for q in extra if q.category == "counting" and len(q.objects) != len(p.objects))
    assert judge(p, render(p.objects)) and not judge(p, render(scene))

    p = _first("position")
    a, b = p.objects
    swapped = [a | {"center": b["center"]}, b | {"center": a["center"]}]
    assert judge(p, render(p.objects)) is True and judge(p, render(swapped)) is False  # plain bools: they go to JSON

    p = _first("colour_attribution")
    a, b = p.objects
    assert judge(p, render(p.objects))
    assert not judge(p, render([a | {"color": b["color"]}, b | {"color": a["color"]}]))


def test_shapes_built_with_hold_out_never_draw_the_pair(tmp_path):
    result = run_cli("data", "build", "shapes", "--out", tmp_path, "--count", "300", "--hold-out", "purple triangle, yellow square")
    assert result.exit_code == 0, result.output
    seen = set()
    with tarfile.open(next(tmp_path.glob("*.tar"))) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                seen |= {(s["color"], s["shape"]) for s in json.load(tar.extractfile(member))["shapes"]}
    assert not seen & set(HOLD) and len(seen) == 16
    assert json.loads((tmp_path / "info.json").read_text())["args"]["hold_out"] == [list(p) for p in HOLD]


ALL_PAIRS = ", ".join(f"{c} {s}" for c in COLORS for s in ("circle", "square", "triangle"))


@pytest.mark.parametrize("args, message", [
    (["data", "build", "shapes", "--hold-out", "pink circle"], "not 'COLOUR SHAPE'"),
    (["data", "build", "shapes", "--count", "3", "--hold-out", ALL_PAIRS], "hold out fewer pairs"),
    (["eval", "--prompts", "--model", "{tmp}", "--hold-out", ALL_PAIRS], "hold out fewer pairs"),
    (["data", "build", "digits", "--hold-out", "red circle"], "shapes set only"),
])
def test_bad_hold_out_is_a_one_line_error(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args] + (["--out", str(tmp_path / "x")] if args[0] == "data" else [])
    result = run_cli(*args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_eval_prompts_samples_judges_and_writes_the_table(text_model, tmp_path):
    out = tmp_path / "adherence.json"
    result = run_cli("eval", "--prompts", "--model", text_model, "--per-category", "2", "--n", "2", "--steps", "2",
                     "--hold-out", "purple triangle", "--json", out, "--save", tmp_path / "images")
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["images"] == len(CATEGORIES) * 2 * 2
    assert set(figures["categories"]) == set(CATEGORIES)
    for row in figures["categories"].values():
        assert 0 <= row["all"] <= 1 and row["seen_images"] == row["held_out_images"] == 2
    assert len(figures["prompts"]) == len(CATEGORIES) * 2 and all(len(p["correct"]) == 2 for p in figures["prompts"])
    assert len(list((tmp_path / "images").glob("*-*-*.png"))) == figures["images"]
    assert (tmp_path / "images" / "grid.png").is_file()
    assert "colour_attribution" in result.output and "held-out" in result.output

    wrong = run_cli("eval", "--prompts")
    assert wrong.exit_code == 2 and "--model" in wrong.output
