"""`ldm data build` / `ldm data info` through the real CLI, read back with plain tarfile."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.main import app
from ldmcli.data.photos import SOURCES, TRAIN_SOURCES, VAL_SOURCES
from ldmcli.data.shards import ShardSink


def ldm(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def build(*args):
    result = ldm("data", "build", *args)
    assert result.exit_code == 0, result.output
    return result


def read_shards(folder: Path, name: str) -> list[dict]:
    """Samples in order, as {suffix: bytes, '__key__': key}, straight from the tar members."""
    samples = []
    for shard in sorted(folder.glob(f"{name}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][suffix] = tar.extractfile(member).read()
    return samples


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_shapes_round_trip_captions_match_pixels(tmp_path):
    result = build("shapes", "--out", tmp_path, "--size", "32", "--count", "24", "--shard-size", "10")
    assert f"wrote 24 samples in 3 shards to {tmp_path}" in result.stdout
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [f"shapes-00000{i}.tar" for i in range(3)]
    samples = read_shards(tmp_path, "shapes")
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(24)]
    counts = set()
    for sample in samples:
        assert {"png", "txt", "json", "__key__"} == set(sample)
        img = np.asarray(image(sample["png"])).astype(int)
        assert img.shape == (32, 32, 3)
        caption, meta = sample["txt"].decode(), json.loads(sample["json"])
        counts.add(len(meta["shapes"]))
        assert caption.count("a ") >= len(meta["shapes"])
        for shape in meta["shapes"]:
            assert f"a {shape['size']} {shape['color']} {shape['shape']}" in caption
            x0, y0, x1, y1 = shape["bbox"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            centre = img[(y0 + y1) // 2, (x0 + x1) // 2]
            assert np.abs(centre - shape["rgb"]).max() < 30, (caption, shape)
        if len(meta["shapes"]) == 2:
            assert meta["relation"] in caption
            (a, b) = ([(s["bbox"][0] + s["bbox"][2]) / 2, (s["bbox"][1] + s["bbox"][3]) / 2] for s in meta["shapes"])
            expect = {"above": a[1] < b[1], "below": a[1] > b[1], "to the left of": a[0] < b[0], "to the right of": a[0] > b[0]}
            assert expect[meta["relation"]], (caption, meta)
    assert counts == {1, 2, 3}
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["samples"] == 24 and info["shards"] == 3 and info["args"]["seed"] == 0


def test_photos_train_never_uses_held_out_and_val_only_does(tmp_path):
    build("photos", "--out", tmp_path / "train", "--size", "32", "--count", "40")
    build("photos", "--out", tmp_path / "val", "--size", "32", "--count", "12", "--split", "val")
    train = [json.loads(s["json"]) for s in read_shards(tmp_path / "train", "photos")]
    val = [json.loads(s["json"]) for s in read_shards(tmp_path / "val", "photos")]
    assert len(train) == 40 and len(val) == 12
    assert {m["source"] for m in train} <= set(TRAIN_SOURCES)
    assert len({m["source"] for m in train}) > 5
    assert {m["source"] for m in val} <= set(VAL_SOURCES)
    for meta in train + val:
        x0, y0, x1, y1 = meta["box"]
        assert x1 - x0 == y1 - y0 >= 32
    for split in ("train", "val"):
        for s in read_shards(tmp_path / split, "photos"):
            assert SOURCES[int(s["cls"])] == json.loads(s["json"])["source"]
    sizes = {image(s["png"]).size for s in read_shards(tmp_path / "train", "photos")}
    assert sizes == {(32, 32)}


def test_digits_have_classes_and_a_fixed_disjoint_val_split(tmp_path):
    build("digits", "--out", tmp_path / "train", "--size", "16", "--count", "40", "--seed", "3")
    build("digits", "--out", tmp_path / "val", "--size", "16", "--split", "val")
    train, val = read_shards(tmp_path / "train", "digits"), read_shards(tmp_path / "val", "digits")
    assert len(train) == 40 and len(val) == 1797 // 6
    for sample in train:
        meta = json.loads(sample["json"])
        assert 0 <= int(sample["cls"]) <= 9 and int(sample["cls"]) == meta["label"]
        img = np.asarray(image(sample["png"]))
        assert img.shape == (16, 16, 3) and img.max() > 200 and img.min() < 30
    assert not {json.loads(s["json"])["index"] for s in train} & {json.loads(s["json"])["index"] for s in val}


@pytest.mark.parametrize("name", ["shapes", "photos", "digits"])
def test_same_seed_same_bytes(tmp_path, name):
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        build(name, "--out", tmp_path / out, "--size", "16", "--count", "6", "--seed", seed)
    same = [(tmp_path / d / f"{name}-000000.tar").read_bytes() for d in "abc"]
    assert same[0] == same[1]
    assert same[0] != same[2]


def test_shards_read_with_webdataset(tmp_path):
    build("shapes", "--out", tmp_path, "--size", "32", "--count", "5")
    dataset = wds.WebDataset(str(tmp_path / "shapes-000000.tar"), shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == 5
    assert samples[0]["png"].size == (32, 32) and isinstance(samples[0]["json"], dict) and samples[0]["txt"]


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)

    def save(path: Path, size=(20, 12), fmt=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)

    save(root / "cats" / "a.png")
    save(root / "cats" / "b.jpg")
    (root / "cats" / "b.txt").write_text("a cat on a mat\n")
    save(root / "dogs" / "c.bmp")
    save(root / "dogs" / "deep" / "d.webp")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "dogs" / "notes.md").write_text("not an image")


def test_folder_with_classes_captions_and_a_corrupt_file(tmp_path):
    pets = tmp_path / "pets"
    make_folder(pets)
    result = build(pets, "--out", tmp_path / "out", "--shard-size", "3")
    assert "skipped 1 unreadable image file(s): dogs/broken.png" in result.stdout
    assert "wrote 4 samples in 2 shards" in result.stdout
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == {"classes": ["cats", "dogs"]}
    samples = {json.loads(s["json"])["source"]: s for s in read_shards(tmp_path / "out", "pets")}
    assert sorted(samples) == ["cats/a.png", "cats/b.jpg", "dogs/c.bmp", "dogs/deep/d.webp"]
    assert [int(samples[k]["cls"]) for k in sorted(samples)] == [0, 0, 1, 1]
    assert samples["cats/a.png"]["png"] == (pets / "cats" / "a.png").read_bytes()
    assert samples["cats/b.jpg"]["jpg"] == (pets / "cats" / "b.jpg").read_bytes()
    assert samples["cats/b.jpg"]["txt"] == b"a cat on a mat"
    assert "txt" not in samples["cats/a.png"]
    assert image(samples["dogs/c.bmp"]["png"]).size == (20, 12)
    assert json.loads((tmp_path / "out" / "info.json").read_text())["skipped"] == 1


def test_folder_resize_and_flat_folder_has_no_classes(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        flat.mkdir(exist_ok=True)
        Image.new("RGB", (30 + i, 20), (i * 50, 0, 0)).save(flat / f"{i}.jpg")
    build(flat, "--out", tmp_path / "out", "--size", "16", "--name", "mine")
    samples = read_shards(tmp_path / "out", "mine")
    assert len(samples) == 3 and all("cls" not in s for s in samples)
    assert {image(s["png"]).size for s in samples} == {(16, 16)}
    assert not (tmp_path / "out" / "classes.json").exists()


def test_unknown_source_is_a_user_error(tmp_path):
    result = ldm("data", "build", "nope", "--out", tmp_path)
    assert result.exit_code == 2
    assert "'nope' is neither a built-in data set (photos, digits, shapes) nor a folder" in result.stderr


def test_info_counts_and_contact_sheet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build("digits", "--out", tmp_path, "--size", "16", "--count", "20", "--shard-size", "8")
    result = ldm("data", "info", tmp_path)
    assert result.exit_code == 0, result.output
    for text in ("shards", "3", "samples", "20", "cls: 20", "png: 20", "16x16: 20", "classes"):
        assert text in result.stdout
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 16 * 8 and sheet.height > 16 * 2
    other = tmp_path / "sheets" / "s.png"
    assert ldm("data", "info", str(tmp_path / "digits-*.tar"), "--sheet", other).exit_code == 0
    assert other.is_file()
    (tmp_path / "contact_sheet.png").unlink()
    result = ldm("data", "info", *sorted(tmp_path.glob("*.tar"))[:2])
    assert result.exit_code == 0 and "16" in result.stdout
    assert (tmp_path / "contact_sheet.png").is_file()


def test_info_missing_path_is_one_line_exit_2(tmp_path):
    result = ldm("data", "info", tmp_path / "missing")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    assert "Traceback" not in result.output


def test_a_crash_leaves_no_half_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardSink(tmp_path, "crash", shard_size=2) as sink:
            for i in range(3):
                sink.write({"txt": f"sample {i}"})
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash-000000.tar"]


def test_expected_samples_reads_info_json_and_gives_up_on_anything_else(tmp_path):
    from ldmcli.data.info import expected_samples

    build("digits", "--out", tmp_path / "a", "--size", "16", "--count", "20")
    build("digits", "--out", tmp_path / "b", "--size", "16", "--count", "12")
    assert expected_samples([str(tmp_path / "a"), str(tmp_path / "b")]) == 32
    assert expected_samples([str(tmp_path / "a"), str(tmp_path / "b" / "digits-000000.tar")]) is None
    (tmp_path / "a" / "info.json").write_text("{not json")
    assert expected_samples([str(tmp_path / "a")]) is None
