"""bench/allocator.py runs each workload under both malloc settings in child processes: run the cheapest
one once, so that a change breaking the bench shows here rather than in `make bench`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ldmcli import allocator

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not allocator.supported(), reason="mallopt is glibc's; elsewhere both settings are the same")
def test_allocator_bench_reports_both_settings_and_their_ratio(tmp_path):
    out = tmp_path / "allocator.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "allocator.py"), "--workloads", "ae_decode", "--calls", "2",
                    "--rounds", "1", "--json", str(out)], check=True, capture_output=True, cwd=ROOT)
    figures = json.loads(out.read_text())
    system, reuse = figures["ae_decode_system_img_s"], figures["ae_decode_reuse_img_s"]
    assert system > 0 and reuse > 0
    assert abs(figures["ae_decode_speedup"] - reuse / system) < 1e-9
    # the decoder's blocks are at most 32 MiB, which glibc's own threshold sometimes learns to keep, so its
    # fault counts need not differ here; tests/test_allocator.py checks the difference on larger blocks
    for mode in ("system", "reuse"):
        assert figures[f"ae_decode_{mode}_faults_per_call"] >= 0
        assert figures[f"ae_decode_{mode}_peak_mem_mb"] > 100  # a process holding torch and the model
