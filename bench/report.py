"""How every benchmark ends: `name: value` lines last, and the same figures as JSON when asked."""

from __future__ import annotations

import json
from pathlib import Path


def report(figures: dict, json_path: str | Path | None = None) -> None:
    for name, value in figures.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
