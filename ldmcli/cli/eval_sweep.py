"""`ldm eval --sweep`: FID against the number of network evaluations (NFE), per sampler, from one model.

Every (sampler, steps) cell samples the same conditions with the same seeds, so the cells differ only in
the sampler; the reference features are computed once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ldmcli.cli.eval_common import write_json
from ldmcli.diffusion import model as M
from ldmcli.diffusion.samplers import SAMPLERS
from ldmcli.errors import UserError
from ldmcli.metrics.features import FeatureSpace, extract, uint8_batches
from ldmcli.metrics.quality import Wanted, sample_metrics
from ldmcli.pipeline import Pipeline, Settings
from ldmcli.train import distributed


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list, got '{text}'") from None
    if not items:
        raise UserError(f"{what} is empty")
    return items


def nfe(sampler: str, steps: int) -> int:
    return steps + SAMPLERS[sampler].extra_evals(steps)


def _generated(pipe: Pipeline, conds: list, seeds: list[int], batch: int):
    for start in range(0, len(seeds), batch):
        c, s = conds[start:start + batch], seeds[start:start + batch]
        images = pipe(c, s).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
        labels = torch.tensor([k if isinstance(k, int) else -1 for k in c])
        yield {"image": images, "cls": labels}


def plot(rows: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        points = sorted((r["nfe"], r[metric]) for r in rows if r["sampler"] == sampler)
        ax.plot(*zip(*points), marker="o", label=sampler)
    ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=metric.upper(), title=f"{metric.upper()} against NFE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run_sweep(model_dir: Path, samplers: list[str], steps: list[int], ref: str | None, space_factory, n: int, seed: int,
              guidance: float | None, batch: int, device: str, json_path: Path | None, plot_path: Path | None) -> dict:
    if ref is None:
        raise UserError("--sweep needs --ref (reference images) to measure FID against")
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad:
        raise UserError(f"unknown sampler '{bad[0]}' (choose from {', '.join(SAMPLERS)})")
    if n < 2 or any(s < 1 for s in steps):
        raise UserError("--n must be at least 2 and every --steps value at least 1")
    env = distributed.setup(device)
    try:
        model = M.load(model_dir, env.device)
        kind = model.recipe.conditioner.kind
        if kind in ("text", "clip", "layout"):
            raise UserError("--sweep measures FID of unconditional or class-conditional models; for text or layout models use --prompts or --layout per sampler")
        conds = [k % model.recipe.conditioner.num_classes for k in range(n)] if kind == "class" else [None] * n
        seeds = [seed + k for k in range(n)]
        space: FeatureSpace = space_factory(env.device)
        ref_rows, _ = extract(uint8_batches(ref, batch, None, env, 0, 0), space.embed, env)
        rows = []
        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task("sweep", total=len(samplers) * len(steps) * n)
            for sampler in samplers:
                for k in steps:
                    bar.update(task, description=f"{sampler} {k} steps")
                    pipe = Pipeline(model, Settings(sampler=sampler, steps=k, guidance=guidance), env.device)
                    sample_rows, _ = extract(_generated(pipe, conds, seeds, batch), space.embed, env, lambda m: bar.advance(task, m))
                    wanted = Wanted(fid=True, accuracy=kind == "class" and space.name.startswith("classifier"))
                    figures = sample_metrics(sample_rows, wanted, ref_rows)
                    rows.append({"sampler": sampler, "steps": k, "nfe": nfe(sampler, k)} | figures)
    finally:
        distributed.teardown()
    result = {"model": str(model_dir), "ref": ref, "features": space.name, "images": n, "rows": rows}
    write_json(json_path, result)
    if plot_path is not None:
        plot(rows, plot_path, "fid")
    table = Table(title=f"FID against NFE, {n} images, features {space.name}")
    for column in ("sampler", "steps", "NFE", "FID", *(["accuracy"] if rows and "accuracy" in rows[0] else [])):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for r in rows:
        table.add_row(r["sampler"], str(r["steps"]), str(r["nfe"]), f"{r['fid']:.3f}", *([f"{r['accuracy']:.3f}"] if "accuracy" in r else []))
    Console().print(table)
    return result
