"""`ldm data build` and `ldm data info`: make image shards and look inside them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ldmcli.data.builtin import BUILTINS, builtin_samples
from ldmcli.data.folder import FolderSet
from ldmcli.data.info import build_info, contact_sheet, sorted_classes, summarize
from ldmcli.data.reader import resolve_shards
from ldmcli.data.shapes import parse_hold_out
from ldmcli.data.shards import ShardSink, check_name
from ldmcli.errors import UserError

app = typer.Typer(
    help="Build image shards from a built-in set or a folder, and inspect shards.\n\n"
    "Example: ldm data build shapes --out data/shapes --count 2000",
    no_args_is_help=True,
)


class Split(str, Enum):
    train = "train"
    val = "val"


class _RateColumn(ProgressColumn):
    """Samples per second, for long builds where the rate says more than the bar."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- it/s" if speed is None else f"{speed:,.0f} it/s", style="progress.data.speed")


def progress_bar(console: Console | None = None, disable: bool = False) -> Progress:
    """The progress bar every long-running data command shows: bar, done/total, rate, ETA (on stderr)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=disable,
    )


def _tracked(samples: Iterable[dict], total: int, description: str, progress: Progress) -> Iterator[dict]:
    task = progress.add_task(description, total=total)
    for sample in samples:
        yield sample
        progress.advance(task)
    progress.update(task, completed=total)


def _positive(value: Optional[int], option: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{option} must be at least 1, got {value}")


@app.command()
def build(
    source: str = typer.Argument(..., help="A built-in set (photos, digits, shapes) or a folder of images (./shapes for a folder named like a set)."),
    out: Path = typer.Option(..., "--out", help="Folder for the shards NAME-000000.tar, ... and info.json."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side (built-in defaults: photos 64, digits 32, shapes 64). Folders: resize shorter side + centre crop."),
    count: Optional[int] = typer.Option(None, "--count", help="Number of samples (default: 10000 train / 1000 val; digits and folders: all)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same shard bytes."),
    split: Split = typer.Option(Split.train, "--split", help="Built-in sets: train, or the held-out val split."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per shard."),
    name: Optional[str] = typer.Option(None, "--name", help="Shard name prefix (default: the set's or folder's name)."),
    hold_out: str = typer.Option("", "--hold-out", help="shapes: colour-shape pairs never drawn, e.g. 'purple triangle, yellow square' (to test generalisation)."),
) -> None:
    """Write WebDataset shards from a built-in set or a folder of images.

    Example: ldm data build shapes --out data/shapes --count 2000

    Example: ldm data build photos --out data/photos_val --split val --size 64

    Example: ldm data build ~/pictures/pets --out data/pets --size 128

    Example: ldm data build shapes --out data/shapes --hold-out "purple triangle, yellow square"
    """
    _positive(size, "--size")
    _positive(count, "--count")
    _positive(shard_size, "--shard-size")
    folder = None
    if source in BUILTINS:
        if size is not None and size < 8:
            raise UserError(f"--size must be at least 8 for built-in sets, got {size}")
        if hold_out and source != "shapes":
            raise UserError("--hold-out is for the shapes set only")
        extra = {"hold_out": [list(pair) for pair in parse_hold_out(hold_out)]} if hold_out else {}
        samples, total, args = builtin_samples(source, size, count, seed, split.value, **extra)
        set_name = check_name(name or source)
    elif hold_out:
        raise UserError("--hold-out is for the shapes set only")
    elif Path(source).is_dir():
        folder = FolderSet(Path(source), size, count, seed, exclude=out)
        samples, total = folder, len(folder)
        args = {"size": size, "count": total, "seed": seed}
        set_name = check_name(name or Path(source).resolve().name)
    else:
        raise UserError(f"'{source}' is neither a built-in data set ({', '.join(BUILTINS)}) nor a folder")

    info_path = out / "info.json"
    with progress_bar() as progress, ShardSink(out, set_name, shard_size) as sink:
        info_path.unlink(missing_ok=True)
        (out / "classes.json").unlink(missing_ok=True)
        for sample in _tracked(samples, total, f"building {set_name}", progress):
            sink.write(sample)
    stats = sink.stats
    if stats.samples == 0:
        raise UserError(f"no readable images in {source} ({len(folder.skipped)} skipped)")

    info = {
        "name": set_name,
        "source": source if folder is None else str(Path(source).resolve()),
        "args": {**args, "shard_size": shard_size},
        "seed": seed,
        "samples": stats.samples,
        "shards": len(stats.shards),
        "files": [p.name for p in stats.shards],
    }
    if folder is not None:
        info["skipped"] = len(folder.skipped)
        if folder.classes is not None:
            (out / "classes.json").write_text(json.dumps({"classes": folder.classes}, indent=2) + "\n")
            info["classes"] = folder.classes
    info_path.write_text(json.dumps(info, indent=2) + "\n")

    if folder is not None and folder.skipped:
        shown = ", ".join(str(p.relative_to(folder.root)) for p in folder.skipped[:3])
        more = f" and {len(folder.skipped) - 3} more" if len(folder.skipped) > 3 else ""
        typer.echo(f"skipped {len(folder.skipped)} unreadable image file(s): {shown}{more}")
    shards = f"{len(stats.shards)} shard{'' if len(stats.shards) == 1 else 's'}"
    typer.echo(f"wrote {stats.samples} samples in {shards} to {out}")


@app.command()
def info(
    paths: list[str] = typer.Argument(..., help="Shard folders, .tar files, globs, {a..b} patterns or pipe: URLs."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Contact sheet PNG (default: DIR/contact_sheet.png for one folder, else ./contact_sheet.png)."),
) -> None:
    """Count shards, samples and keys; show image sizes, classes and captions; write a contact sheet.

    Example: ldm data info data/shapes --sheet shapes.png
    """
    shards = list(dict.fromkeys(resolve_shards(paths)))
    summary = summarize(shards)
    console = Console()
    folder = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else None

    table = Table(title=" ".join(paths), show_header=False)
    table.add_row("shards", str(summary.shards))
    table.add_row("samples", str(summary.samples))
    built = build_info(folder) if folder is not None else None
    if built is not None:
        table.add_row("built from", f"{built.get('source')} {json.dumps(built.get('args', {}))}")
    table.add_row("keys", ", ".join(f"{k}: {n}" for k, n in sorted(summary.keys.items())))
    table.add_row("image sizes", ", ".join(f"{s}: {n}" for s, n in summary.sizes.most_common(8)) or "-")
    if summary.bad_images:
        table.add_row("unreadable images", str(summary.bad_images))
    if summary.unreadable_shards:
        table.add_row("unreadable or truncated shards", str(summary.unreadable_shards))
    if summary.classes:
        table.add_row("classes", ", ".join(f"{c}: {n}" for c, n in sorted_classes(summary.classes)))
    for i, caption in enumerate(summary.captions):
        table.add_row("captions" if i == 0 else "", caption)
    console.print(table)

    if summary.thumbs:
        target = sheet or (folder / "contact_sheet.png" if folder is not None else Path("contact_sheet.png"))
        target.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(summary.thumbs).save(target)
        console.print(f"contact sheet of the first {len(summary.thumbs)} images: {target}")
