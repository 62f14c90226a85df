"""The built-in data sets by name, with their default image size and sample count per split."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ldmcli.data.digits import digit_samples, split_size
from ldmcli.data.photos import photo_samples
from ldmcli.data.shapes import shape_samples


@dataclass(frozen=True)
class Builtin:
    """`count` is (train, val) default; None means every sample the split has."""

    samples: Callable[..., Iterator[dict]]
    size: int
    count: tuple[int | None, int | None]
    limit: Callable[[str], int] | None = None


BUILTINS = {
    "photos": Builtin(photo_samples, 64, (10000, 1000)),
    "digits": Builtin(digit_samples, 32, (None, None), limit=split_size),
    "shapes": Builtin(shape_samples, 64, (10000, 1000)),
}


def builtin_samples(name: str, size: int | None = None, count: int | None = None, seed: int = 0, split: str = "train",
                    **extra) -> tuple[Iterator[dict], int, dict]:
    """Samples of built-in set `name`, how many there will be, and the resolved arguments (with the
    set's own `extra` ones, e.g. shapes' hold_out)."""
    spec = BUILTINS[name]
    size = size or spec.size
    if count is None:
        count = spec.count[split == "val"]
    if spec.limit is not None:
        count = spec.limit(split) if count is None else min(count, spec.limit(split))
    args = {"size": size, "count": count, "seed": seed, "split": split, **extra}
    return spec.samples(**args), count, args
