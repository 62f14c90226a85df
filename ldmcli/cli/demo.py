"""`ldm demo`: data -> autoencoder -> latents -> text-to-image model -> samples -> prompt adherence -> report."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ldmcli.demo.report import write_report
from ldmcli.demo.stages import GRID_PROMPTS, Plan, build_stages, run_stage

_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for everything the demo makes."),
    fast: bool = typer.Option(False, "--fast", help="A two-minute smoke version: tiny data and a few steps per stage."),
    recipes: Path = typer.Option(_RECIPES, "--recipes", help="Folder with demo-ae-shapes.toml and demo-ldm-shapes.toml."),
    restart: bool = typer.Option(False, "--restart", help="Run every stage again instead of skipping finished ones."),
) -> None:
    """Train a text-to-image latent diffusion model on the built-in shapes and judge it; writes OUT/report.html.

    Rerunning skips the stages that finished and resumes an interrupted training from its checkpoint.

    Example: ldm demo --out runs/demo
    """
    plan = Plan.fast() if fast else Plan()
    if recipes.is_absolute() and recipes.is_relative_to(Path.cwd()):
        recipes = recipes.relative_to(Path.cwd())  # the report's commands then read as a user types them
    stages = build_stages(out, recipes, plan)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.txt").write_text("\n".join(GRID_PROMPTS) + "\n")
    state_path = out / "demo.json"
    previous = json.loads(state_path.read_text()) if state_path.is_file() and not restart else {}
    if previous.get("fast", fast) != fast:
        previous = {}
    done = {r["name"]: r for r in previous.get("stages", []) if r.get("status") == "done"}
    records, upstream_ran, console = [], restart, Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        overall = bar.add_task("demo", total=sum(s.seconds for s in stages))
        finished = 0.0
        for k, stage in enumerate(stages, 1):
            record = {"name": stage.name, "command": stage.command}
            if not upstream_ran and stage.name in done and stage.output.exists():
                records.append(record | {"status": "done", "seconds": done[stage.name].get("seconds"), "skipped": True})
                finished += stage.seconds
                bar.update(overall, completed=finished)
                continue
            label = f"[{k}/{len(stages)}] {stage.title}"
            bar.update(overall, description=label)

            def progress(fraction: float, base: float = finished, weight: float = stage.seconds) -> None:
                bar.update(overall, completed=base + fraction * weight)

            # After a stage that ran, the later ones start over: what they read has changed. Otherwise an
            # interrupted training resumes from its checkpoint.
            seconds = run_stage(stage, fresh=upstream_ran, log=out / "logs" / f"{stage.name}.log", on_progress=progress)
            upstream_ran = True
            finished += stage.seconds
            records.append(record | {"status": "done", "seconds": round(seconds, 1)})
            state_path.write_text(json.dumps({"fast": fast, "stages": records + [r for r in previous.get("stages", [])
                                                                                 if r["name"] not in {x["name"] for x in records}]}, indent=2))
        bar.update(overall, description="report")
        total = sum(r["seconds"] or 0 for r in records)
        report = write_report(out, records, total)
        state_path.write_text(json.dumps({"fast": fast, "stages": records, "seconds": round(total, 1)}, indent=2))
    typer.echo(f"demo finished in {total / 60:.1f} min of stage time; open {report}")
