import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ldmcli.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    """Run `ldm ARGS` in-process, as a user would type it."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_ldm(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m ldmcli ARGS` in a fresh process (signals, torchrun, exit codes)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ldmcli", *map(str, args)], env=full_env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """A small built-in digits set at 16 px, built once through the CLI."""
    out = tmp_path_factory.mktemp("digits")
    result = run_cli("data", "build", "digits", "--out", out, "--size", "16", "--count", "600", "--shard-size", "200")
    assert result.exit_code == 0, result.output
    return out
