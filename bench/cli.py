"""Running the `ldm` CLI from a benchmark, in this interpreter; a failure ends the benchmark with the
command's own error message instead of a CalledProcessError that hides it."""

from __future__ import annotations

import subprocess
import sys


def ldm(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "ldmcli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        sys.exit(f"ldm {args[0]} failed ({done.returncode}): {lines[-1] if lines else 'no output'}")
