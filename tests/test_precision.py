"""precision "auto" runs bf16 only where the device has it natively: on an AVX2-only CPU bf16 autocast
made a 3x3 convolution 26x slower than fp32, so every command's default must follow the hardware."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli

from ldmcli import pipeline, precision
from ldmcli.errors import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert precision.resolve("auto", CPU) == expected
    assert precision.resolve("fp32", CPU) == "fp32"


def test_cpu_answer_agrees_with_the_cpu_flags():
    """Read independently of torch: bf16 instructions mean native, an x86 CPU without AVX-512 means not."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.is_file():
        pytest.skip("reads the x86 flags in /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert precision.native_bf16(CPU)
    if "avx512f" not in flags:
        assert not precision.native_bf16(CPU)


def test_unknown_precision_names_the_option():
    with pytest.raises(UserError, match="--dtype must be one of auto, bf16, fp32, got 'fp8'"):
        precision.resolve("fp8", CPU, "--dtype")


def test_explicit_bf16_is_honoured_with_one_warning_where_slow(monkeypatch, capsys):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.resolve("bf16", CPU) == "bf16"
    assert precision.resolve("bf16", CPU) == "bf16"
    err = capsys.readouterr().err
    assert err.count("no native bf16") == 1


def test_autocast_is_on_for_bf16_only():
    with precision.autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_training_and_sampling_default_to_the_hardware_s_choice(digits_shards, tmp_path, monkeypatch, native, expected):
    seen = []
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)

    def recording(device, p):
        seen.append(p)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=p == "bf16")

    monkeypatch.setattr(precision, "autocast", recording)
    monkeypatch.setattr(pipeline, "autocast", recording)
    result = run_cli("train-diffusion", digits_shards, "--out", tmp_path / "run", *TINY, "--set", "train.steps=1")
    assert result.exit_code == 0, result.output
    assert seen == [expected]
    result = run_cli("sample", "--model", tmp_path / "run" / "model", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert set(seen[1:]) == {expected} and len(seen) > 1


def test_benchmarks_time_bf16_only_where_it_is_native(tmp_path):
    """A bench on an AVX2-only CPU would spend its time in bf16's reference kernels: auto leaves bf16 out."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ae.json"
    subprocess.run([sys.executable, str(root / "bench" / "autoencoder.py"), "--recipe", str(root / "recipes" / "ae-kl-f4-photos.toml"),
                    "--size", "16", "--batch", "1", "--repeats", "1", "--json", str(out)], check=True, capture_output=True, cwd=root)
    figures = json.loads(out.read_text())
    assert figures["ratio_encode_fp32"] > 0 and figures["ratio_decode_fp32"] > 0
    assert ("ratio_decode_bf16" in figures) == precision.native_bf16(CPU)
