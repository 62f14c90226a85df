"""ldm's malloc setting: freed tensor memory is reused without the kernel zero-filling it again."""

import subprocess
import sys

import pytest
from conftest import run_ldm

from ldmcli import allocator

# A step of three 64 MiB tensors, ten times; the page faults of the last four steps. Under "reuse" the
# heap grows over the first steps until freed blocks coalesce into ones the next step's fit, then stays.
FAULTS = """
import resource, sys, torch
from ldmcli import allocator
print(allocator.configure(sys.argv[1]))
def step():
    x = torch.ones(16 << 20)
    return float((x * 2 + x).sum())
for _ in range(6):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(not allocator.supported(), reason="mallopt is glibc's; elsewhere the setting does nothing")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_reuse_serves_freed_blocks_again_where_glibc_faults_every_page_afresh():
    changed, reused = _faults("reuse")
    unchanged, system = _faults("system")
    assert (changed, unchanged) == ("True", "False")
    assert system >= 0.9 * 4 * 3 * (64 << 20) // 4096  # each 64 MiB block mapped afresh, 4 KiB pages
    # the heap's blocks come back already mapped; now and then one of the twelve is placed anew
    assert reused <= 0.25 * system


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="LDM_MALLOC must be one of reuse, system"):
        allocator.configure("jemalloc")


def test_cli_refuses_an_unknown_setting_in_one_line():
    result = run_ldm("--version", env={"LDM_MALLOC": "tcmalloc"})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: LDM_MALLOC must be one of reuse, system, got 'tcmalloc'"
    assert run_ldm("--version", env={"LDM_MALLOC": "system"}).returncode == 0
    assert run_ldm("--version", env={"LDM_MALLOC": ""}).returncode == 0


@glibc
def test_ldm_info_says_which_setting_the_process_runs():
    assert "reuse (LDM_MALLOC=system: glibc's defaults)" in run_ldm("info").stdout
    shown = run_ldm("info", env={"LDM_MALLOC": "system"}).stdout
    assert "glibc's defaults" in shown and "reuse" not in shown
