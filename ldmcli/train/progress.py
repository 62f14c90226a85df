"""What a person watching a run sees: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def fmt(value: float) -> str:
    return f"{value:.4g}"


class RunDisplay:
    """A progress bar with loss, img/s and ETA; or one line per log interval when quiet or not a TTY."""

    def __init__(self, total: int, start: int, enabled: bool, quiet: bool, title: str):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = enabled and not quiet and sys.stderr.isatty()
        self.total = total
        self.start_time = time.monotonic()
        self.start_step = start
        self.progress = None
        if self.bar:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(title, total=total, completed=start, stats="")
            self.progress.start()

    def update(self, step: int, record: dict | None) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            stats = ""
            if record:
                stats = f"loss {fmt(record.get('loss', float('nan')))}  {record.get('img_per_s', 0):.1f} img/s"
            self.progress.update(self.task, completed=step, **({"stats": stats} if record else {}))
        elif record:
            done = step - self.start_step
            rate = done / max(time.monotonic() - self.start_time, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            parts = " ".join(f"{k}={fmt(v)}" for k, v in record.items() if k != "step" and isinstance(v, (int, float)))
            self.console.print(f"step {step}/{self.total} {parts} eta={eta:.0f}s", highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _logged_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank line or one a kill cut short."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl as written so far (none when it is not there yet), without a line
    that a kill cut short: what reports, progress bars and benches read."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines() if Path(path).is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """metrics.jsonl: one JSON object per log interval; resuming drops records past the checkpoint
    and any line that a kill left half-written."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path = Path(path)
        self.enabled = enabled
        if enabled and resume_step is not None and self.path.exists():
            lines = self.path.read_text(errors="replace").splitlines()
            kept = [ln for ln in lines if (step := _logged_step(ln)) is not None and step <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
