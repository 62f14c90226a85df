"""Layout-to-image: the layout conditioner's tokens, the box matching of the layout metric (checked on
rendered scenes), a tiny layout model trained through the CLI, `ldm sample --layout` and
`ldm eval --layout` end to end, and wrong layouts as one-line errors."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, train
from PIL import Image
from test_bad_input import one_error_line

from ldmcli.data.shapes import shape_scene
from ldmcli.diffusion.conditioning import ConditionerConfig, build_conditioner, context_dim
from ldmcli.diffusion.layout import Box, Layout, boxes_of, quantise
from ldmcli.metrics.layout import iou, match, summarise
from ldmcli.metrics.shapes_detector import detect

CFG = ConditionerConfig(kind="layout", width=16, layers=1, heads=2, head_dim=8, max_boxes=4, coord_bins=32)
RED_CIRCLE = Box("circle", "red", (0.1, 0.2, 0.4, 0.5))
BLUE_SQUARE = Box("square", "blue", (0.6, 0.6, 0.9, 0.9))
LAYOUT_ARGS = ["--set", "conditioner.kind=layout", "--set", "conditioner.width=16", "--set", "conditioner.layers=1",
               "--set", "conditioner.heads=2", "--set", "conditioner.head_dim=8", "--set", "conditioner.max_boxes=4"]
NO_FLIP = ["--set", "data.flip=false"]  # pixel-space training reads images: a flip would move them off their boxes


def test_one_token_per_box_slot_and_the_null_layout_is_all_padding():
    torch.manual_seed(0)
    cond = build_conditioner(CFG, 32).eval()
    out = cond([Layout((RED_CIRCLE,)), Layout((RED_CIRCLE, BLUE_SQUARE)), Layout()])["context"]
    assert out.shape == (3, 4, 16) and context_dim(CFG) == 16
    null = cond(cond.null(2))["context"]
    assert torch.allclose(null[0], null[1]) and torch.allclose(null[0], out[2])
    assert all(torch.allclose(null[0, 0], null[0, k]) for k in range(4))  # every slot the padding token
    dropped = cond.drop([Layout((RED_CIRCLE,)), Layout((BLUE_SQUARE,))], torch.tensor([True, False]))
    assert dropped == [Layout(), Layout((BLUE_SQUARE,))]


def test_moving_relabelling_or_recolouring_a_box_changes_the_context_but_box_order_does_not():
    torch.manual_seed(0)
    cond = build_conditioner(CFG, 32).eval()
    base = Layout((RED_CIRCLE, BLUE_SQUARE))
    variants = [Layout((Box("circle", "red", (0.2, 0.2, 0.5, 0.5)), BLUE_SQUARE)), Layout((Box("triangle", "red", RED_CIRCLE.box), BLUE_SQUARE)),
                Layout((Box("circle", "green", RED_CIRCLE.box), BLUE_SQUARE)), Layout((Box("circle", None, RED_CIRCLE.box), BLUE_SQUARE))]
    out = cond([base, Layout((BLUE_SQUARE, RED_CIRCLE)), *variants])["context"]
    pooled = out.sort(dim=1).values  # tokens are a set: compare them whatever their slots
    assert torch.allclose(pooled[0], pooled[1], atol=1e-6)
    for k in range(2, 6):
        assert not torch.allclose(out[0], out[k], atol=1e-4), k


def test_coordinates_are_quantised_to_bins_with_both_ends_exact():
    assert [quantise(v, 32) for v in (0.0, 1 / 31, 0.5, 1.0, 1.2, -0.1)] == [0, 1, 16, 31, 31, 0]
    cond = build_conditioner(CFG, 32).eval()
    near = cond([Layout((Box("circle", "red", (0.1, 0.2, 0.4, 0.5)),)), Layout((Box("circle", "red", (0.101, 0.2, 0.4, 0.5)),))])["context"]
    assert torch.equal(near[0], near[1])  # the same bin


def test_a_caption_model_puts_the_caption_tokens_after_the_boxes():
    cfg = ConditionerConfig(**{**CFG.__dict__, "caption": True, "max_length": 12, "pooled": True})
    cond = build_conditioner(cfg, 32).eval()
    out = cond([Layout((RED_CIRCLE,), "a red circle"), Layout((RED_CIRCLE,), "a blue square")])
    assert out["context"].shape == (2, 4 + 12, 16) and out["y"].shape == (2, 32)
    assert torch.allclose(out["context"][0, :4], out["context"][1, :4]) and not torch.allclose(out["context"][0, 4:], out["context"][1, 4:])


def test_boxes_of_a_sample_json_pixel_shapes_or_fractions_bad_ones_counted():
    meta = {"shapes": [{"shape": "circle", "color": "red", "bbox": [8, 16, 24, 32]}, {"shape": "star", "color": "red", "bbox": [0, 0, 8, 8]}]}
    boxes, bad = boxes_of(meta, 64, CFG)
    assert boxes == (Box("circle", "red", (0.125, 0.25, 0.375, 0.5)),) and bad == 1
    boxes, bad = boxes_of({"layout": [RED_CIRCLE.to_json(), {"label": "square", "box": [0.5, 0.5, 0.4, 0.9]}]}, 64, CFG)
    assert boxes == (RED_CIRCLE,) and bad == 1
    assert boxes_of({}, 64, CFG) == ((), 0) and boxes_of("not a dict", 64, CFG) == ((), 0)
    many = {"layout": [BLUE_SQUARE.to_json()] * 6}
    assert boxes_of(many, 64, CFG) == ((BLUE_SQUARE,) * 4, 2)


def test_the_metric_scores_rendered_scenes_near_one_and_matches_shape_and_colour_first():
    cfg = ConditionerConfig(kind="layout")
    judged = []
    for i in range(60):
        image, _, meta = shape_scene(np.random.default_rng([21, i]), 64)
        boxes, _ = boxes_of(meta, 64, cfg)
        found = detect(np.asarray(image))
        judged.append((boxes, found, match(boxes, found, 64, 64)))
    figures = summarise(judged)
    assert figures["mean_iou"] > 0.9 and figures["iou_50"] == figures["shape_correct"] == figures["colour_correct"] == 1.0
    assert iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3) and iou((0, 0, 0.1, 0.1), (0.5, 0.5, 1, 1)) == 0

    image, _, meta = shape_scene(np.random.default_rng([21, 0]), 64)
    real = detect(np.asarray(image))[0]
    swapped = Box("square" if real.shape != "square" else "circle", real.color, real.bbox)
    record = match([swapped], [real], 64, 64)[0]  # no detection of that shape: the best overlap, marked wrong
    assert record["found"] and not record["shape"] and record["colour"] and record["iou"] > 0.8
    far = Box(real.shape, real.color, (0.0, 0.0, 0.01, 0.01))
    assert match([far], [real], 64, 64)[0] | {"iou": 0.0} == {"iou": 0.0, "found": True, "shape": True, "colour": True}
    assert match([Box("circle", None, (0.0, 0.0, 0.01, 0.01))], [], 64, 64)[0]["found"] is False


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    shards = tmp_path_factory.mktemp("shapes16")
    result = run_cli("data", "build", "shapes", "--out", shards, "--size", "16", "--count", "24", "--shard-size", "24")
    assert result.exit_code == 0, result.output
    return shards


@pytest.fixture(scope="module")
def layout_model(shapes16, tmp_path_factory):
    return train(tmp_path_factory, shapes16, *LAYOUT_ARGS, *NO_FLIP, "--set", "train.sample_every=2", "--set", "preview.n=3",
                 "--set", "preview.steps=2")


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_sample_from_a_layout_writes_it_into_the_png(layout_model, tmp_path):
    layout = _write(tmp_path / "layout.json", [{"label": "circle", "colour": "red", "box": [0.1, 0.1, 0.5, 0.5]},
                                                {"label": "square", "box": [0.5, 0.5, 0.9, 0.9]}])
    empty = _write(tmp_path / "empty.json", [])
    result = run_cli("sample", "--model", layout_model, "--layout", layout, "--layout", empty, "--n", "2", "--steps", "2",
                     "--out", tmp_path / "out", "--grid")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "out").glob("0*.png"))
    assert len(pngs) == 4 and (tmp_path / "out" / "grid.png").is_file()
    chunks = [Image.open(p).text for p in pngs]
    assert json.loads(chunks[0]["layout"]) == json.loads(layout.read_text()) and chunks[2]["layout"] == "[]"
    assert "prompt" not in chunks[0] and chunks[0]["seed"] == "0"


def test_the_first_batch_layouts_are_the_preview_conditions(layout_model):
    run = layout_model.parent
    assert sorted((run / "samples").glob("*.png")), "a preview grid"
    saved = json.loads((layout_model / "config.json").read_text())["config"]["conditioner"]
    assert saved["kind"] == "layout" and saved["labels"] == ["circle", "square", "triangle"] and "purple" in saved["colours"]


def test_eval_layout_samples_detects_and_writes_the_figures(layout_model, tmp_path):
    out = tmp_path / "layout.json"
    result = run_cli("eval", "--layout", "--model", layout_model, "--scenes", "3", "--n", "2", "--steps", "2",
                     "--json", out, "--save", tmp_path / "images")
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["images"] == 6 and figures["scenes"] == 3 and figures["boxes"] > 0
    for name in ("mean_iou", "iou_50", "shape_correct", "count_correct"):
        assert 0 <= figures[name] <= 1 and 0 <= figures["rendered"][name] <= 1
    assert all(len(rec["iou"]) == 2 for rec in figures["layouts"])
    assert (tmp_path / "images" / "grid.png").is_file() and len(list((tmp_path / "images").glob("0*.png"))) == 6
    assert "mean_iou" in result.output and "rendered" in result.output


@pytest.mark.parametrize("content, message", [
    ([{"label": "circle", "box": [0.1, 0.2, 1.3, 0.5]}], "lies outside 0..1"),
    ([{"label": "circle", "box": [0.5, 0.2, 0.4, 0.5]}], "needs x0 < x1 and y0 < y1"),
    ([{"label": "circle", "box": [0.1, 0.5, 0.4, 0.5]}], "needs x0 < x1 and y0 < y1"),
    ([{"label": "star", "box": [0.1, 0.2, 0.4, 0.5]}], "unknown label 'star' (this model knows circle, square, triangle)"),
    ([{"label": "circle", "colour": "pink", "box": [0.1, 0.2, 0.4, 0.5]}], "unknown colour 'pink'"),
    ([{"label": "circle", "box": [0.1, 0.2, 0.4]}], "box must be [x0, y0, x1, y1]"),
    ([{"label": "circle", "bx": [0.1, 0.2, 0.4, 0.5]}], "unknown key 'bx'"),
    ({"label": "circle"}, "must hold a list"),
    ([{"label": "circle", "box": [0.1, 0.1, 0.2, 0.2]}] * 5, "has 5 boxes; this model takes at most 4"),
    ("[{\"label\": ", "is not JSON"),
    (None, "cannot read --layout file"),
])
def test_wrong_layouts_are_one_line_errors(layout_model, tmp_path, content, message):
    path = tmp_path / "layout.json" if content is None else _write(tmp_path / "layout.json", content)
    one_error_line(run_cli("sample", "--model", layout_model, "--layout", path, "--steps", "2", "--out", tmp_path), message)


def test_a_layout_model_wants_a_layout_and_other_models_refuse_one(layout_model, digits_shards, tmp_path, tmp_path_factory):
    layout = _write(tmp_path / "l.json", [RED_CIRCLE.to_json()])
    one_error_line(run_cli("sample", "--model", layout_model, "--out", tmp_path), "give --layout FILE")
    one_error_line(run_cli("sample", "--model", layout_model, "--layout", layout, "--prompt", "a red circle", "--out", tmp_path), "reads no caption")
    class_model = train(tmp_path_factory, digits_shards, "--set", "conditioner.kind=class")
    one_error_line(run_cli("sample", "--model", class_model, "--layout", layout, "--out", tmp_path), "--layout needs a layout-to-image model")
    one_error_line(run_cli("eval", "--layout", "--model", class_model), "--layout needs a layout-to-image model")
    one_error_line(run_cli("eval", "--layout", "--model", layout_model, "--scenes", "0"), "--scenes, --n and --batch-size must be at least 1")


@pytest.mark.parametrize("augment", [["--set", "data.flip=true"], [*NO_FLIP, "--set", "data.rotate=true"]], ids=["flip", "rotate"])
def test_training_a_layout_model_on_flipped_or_turned_images_is_refused(shapes16, tmp_path, augment):
    result = run_cli("train-diffusion", shapes16, "--out", tmp_path / "run", *TINY, *LAYOUT_ARGS, *augment)
    one_error_line(result, "needs data.flip = false and data.rotate = false")


def test_a_layout_and_caption_model_trains_and_samples_with_both(shapes16, tmp_path, tmp_path_factory):
    model = train(tmp_path_factory, shapes16, *LAYOUT_ARGS, *NO_FLIP, "--set", "conditioner.caption=true", "--set", "conditioner.max_length=16")
    layout = _write(tmp_path / "l.json", [RED_CIRCLE.to_json()])
    result = run_cli("sample", "--model", model, "--layout", layout, "--prompt", "a red circle", "--prompt", "a blue square", "--n", "1",
                     "--steps", "2", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    chunks = [Image.open(p).text for p in sorted((tmp_path / "out").glob("*.png"))]
    assert [c["prompt"] for c in chunks] == ["a red circle", "a blue square"] and all("layout" in c for c in chunks)
