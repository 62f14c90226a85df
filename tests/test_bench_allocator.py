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
    # glibc's default maps and zero-fills the decoder's large activations on every call (about 10,000
    # pages); under reuse they come back mapped, bar now and then a block the heap places anew
    assert figures["ae_decode_system_faults_per_call"] > max(2 * figures["ae_decode_reuse_faults_per_call"], 1000)
    assert figures["ae_decode_reuse_peak_mem_mb"] > 0
