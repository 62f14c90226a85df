"""What the `ldm eval` flows share: sampling every condition n times under one progress bar, and --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ldmcli.pipeline import Pipeline


def write_json(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def sample_each(pipe: Pipeline, conds: list, n: int, seed: int, batch: int, label: str) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Image j of condition k (seed + k * n + j), `batch` at a time: yields the batch's (k, j) and images."""
    jobs = [(k, j) for k in range(len(conds)) for j in range(n)]
    console = Console(stderr=True)
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=len(jobs))
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            yield chunk, pipe([conds[k] for k, _ in chunk], [seed + k * n + j for k, j in chunk])
            bar.advance(task, len(chunk))
