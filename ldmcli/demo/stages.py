"""The demo's stages: each one is a real `ldm` command, run as its own process, so the report can show
the exact command a user reruns. A stage is skipped when its output exists (unless an earlier stage
ran again); an interrupted training stage resumes from its last checkpoint."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ldmcli.errors import UserError
from ldmcli.train.progress import read_metrics

HOLD_OUT = "purple triangle, yellow square"

# Prompts of the sample grid, in the training captions' grammar; the last four name held-out pairs.
GRID_PROMPTS = [
    "a large red circle in the center",
    "a large blue square in the center",
    "a large green triangle in the center",
    "a small orange circle on the left",
    "a large red square at the top",
    "a small blue triangle at the bottom",
    "a large yellow circle above a small green square",
    "a small red triangle to the left of a large blue circle",
    "a large purple triangle in the center",
    "a large yellow square in the center",
    "a small purple triangle on the right",
    "a large yellow square below a small red circle",
]


@dataclass
class Plan:
    """Sizes of one demo run: the full one, or `--fast` for a smoke test of every stage."""

    train_count: int = 6000
    val_count: int = 500
    ae_steps: int = 0  # 0: the recipe's
    ldm_steps: int = 0
    ae_batch: int = 0  # 0: the recipe's
    sample_steps: int = 0  # 0: the sampler's default
    recon_limit: int = 256
    per_category: int = 16
    n: int = 4
    grid_n: int = 4

    @classmethod
    def fast(cls) -> Plan:
        return cls(train_count=400, val_count=64, ae_steps=30, ldm_steps=30, ae_batch=8, sample_steps=8, recon_limit=32, per_category=2,
                   n=2, grid_n=2)


@dataclass
class Stage:
    name: str
    title: str
    args: list[str]  # arguments of `ldm`
    output: Path  # exists once the stage has finished
    seconds: float  # expected duration on a 2-core CPU, for the ETA
    run_dir: Path | None = None  # training stages: resumed from here; progress read from its metrics.jsonl
    steps: int = 0
    clears: list[Path] = field(default_factory=list)  # removed before a fresh run

    @property
    def command(self) -> str:
        return shlex.join(["ldm", *self.args])


def _recipe_steps(recipe: Path) -> int:
    import tomllib

    return int(tomllib.loads(recipe.read_text())["train"]["steps"])


def build_stages(out: Path, recipes: Path, plan: Plan) -> list[Stage]:
    data, val, latents = out / "data" / "shapes", out / "data" / "shapes-val", out / "data" / "shapes-latents"
    ae_recipe, ldm_recipe = recipes / "demo-ae-shapes.toml", recipes / "demo-ldm-shapes.toml"
    for recipe in (ae_recipe, ldm_recipe):
        if not recipe.is_file():
            raise UserError(f"demo recipe {recipe} is missing: run the demo from a clone of ldmcli or pass --recipes DIR")
    ae_steps, ldm_steps = plan.ae_steps or _recipe_steps(ae_recipe), plan.ldm_steps or _recipe_steps(ldm_recipe)
    ae_set = ["--set", f"train.steps={ae_steps}"] if plan.ae_steps else []
    ae_set += ["--set", f"train.batch_size={plan.ae_batch}"] if plan.ae_batch else []
    sampler_steps = ["--steps", str(plan.sample_steps)] if plan.sample_steps else []
    ldm_set = ["--set", f"train.steps={ldm_steps}"] if plan.ldm_steps else []
    prompts = out / "prompts.txt"
    return [
        Stage("data", "build the shapes shards", ["data", "build", "shapes", "--out", str(data), "--count", str(plan.train_count),
              "--hold-out", HOLD_OUT], data / "info.json", 10),
        Stage("data-info", "summarise the data", ["data", "info", str(data)], data / "contact_sheet.png", 4),
        Stage("data-val", "build the held-out shapes", ["data", "build", "shapes", "--split", "val", "--out", str(val),
              "--count", str(plan.val_count)], val / "info.json", 3),
        Stage("train-ae", "train the autoencoder", ["train-ae", str(data), "--recipe", str(ae_recipe), "--out", str(out / "ae"), *ae_set],
              out / "ae" / "model" / "model.safetensors", 120 * ae_steps / max(_recipe_steps(ae_recipe), 1), out / "ae", ae_steps),
        Stage("recon", "measure reconstructions", ["eval", str(val), "--recon", "--ae", str(out / "ae" / "model"), "--limit",
              str(plan.recon_limit), "--json", str(out / "ae" / "recon.json"), "--save", str(out / "ae" / "recon")],
              out / "ae" / "recon.json", 10, clears=[out / "ae" / "recon"]),
        Stage("encode", "encode latents", ["encode", str(data), "--ae", str(out / "ae" / "model"), "--out", str(latents)],
              latents / "stats.json", 30 * plan.train_count / 6000),
        Stage("train-ldm", "train the text-to-image model", ["train-diffusion", str(latents), "--recipe", str(ldm_recipe),
              "--out", str(out / "ldm"), *ldm_set], out / "ldm" / "model" / "model.safetensors",
              480 * ldm_steps / max(_recipe_steps(ldm_recipe), 1), out / "ldm", ldm_steps),
        Stage("sample", "sample the prompt grid", ["sample", "--model", str(out / "ldm" / "model"), "--prompts", str(prompts),
              "--n", str(plan.grid_n), *sampler_steps, "--grid", "--out", str(out / "samples")], out / "samples" / "grid.png", 15,
              clears=[out / "samples"]),
        Stage("adherence", "judge prompt adherence", ["eval", "--prompts", "--model", str(out / "ldm" / "model"), "--hold-out", HOLD_OUT,
              "--per-category", str(plan.per_category), "--n", str(plan.n), *sampler_steps, "--json", str(out / "adherence.json"),
              "--save", str(out / "adherence")], out / "adherence.json", 60 * plan.per_category * plan.n / 64,
              clears=[out / "adherence"]),
    ]


def _last_step(run_dir: Path) -> int:
    records = read_metrics(run_dir / "metrics.jsonl")
    return int(records[-1].get("step", 0)) if records else 0


def run_stage(stage: Stage, fresh: bool, log: Path, on_progress: Callable[[float], None]) -> float:
    """Run one stage to its end; on_progress gets the finished fraction. Returns its seconds."""
    args = list(stage.args)
    resumable = stage.run_dir is not None and (stage.run_dir / "checkpoints" / "latest").is_file()
    if fresh or not resumable:
        for path in [*stage.clears, *([stage.run_dir] if stage.run_dir else [])]:
            shutil.rmtree(path, ignore_errors=True)
    elif resumable:
        args = [args[0], "--resume", str(stage.run_dir)]
    if stage.run_dir is not None:
        args.append("--quiet")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as sink:
        sink.write(f"$ {shlex.join(['ldm', *args])}\n")
        sink.flush()
        proc = subprocess.Popen([sys.executable, "-m", "ldmcli", *args], stdout=sink, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if stage.run_dir is not None and stage.steps:
                    on_progress(min(_last_step(stage.run_dir) / stage.steps, 1.0))
                else:
                    on_progress(min((time.monotonic() - start) / stage.seconds, 0.95))
        except KeyboardInterrupt:  # Ctrl-C reached the stage too: a training checkpoints before it exits
            proc.wait()
            raise UserError(f"interrupted in stage '{stage.name}'; run the same command again to go on from there") from None
    if proc.returncode != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        raise UserError(f"demo stage '{stage.name}' failed (exit {proc.returncode}): {tail[0] if tail else ''} (log: {log})")
    if not stage.output.exists():  # a training stopped by a signal exits 0 with a checkpoint, not a model
        raise UserError(f"demo stage '{stage.name}' stopped before it wrote {stage.output}; run the same command again to resume")
    on_progress(1.0)
    return time.monotonic() - start
