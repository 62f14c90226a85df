import subprocess
import sys

import typer
from conftest import run_cli, run_ldm

from ldmcli import __version__
from ldmcli.cli.main import app


def test_version():
    assert run_cli("--version").output.strip() == f"ldm {__version__}"


def test_start_up_does_not_import_torchvision():
    """torchvision drags in torch._dynamo: seconds on every command (the demo starts nine), so it is imported only where used."""
    code = "import sys, ldmcli.cli.main; print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _command_paths(command, prefix=()):
    subs = getattr(command, "commands", None)
    if not subs:
        return [list(prefix)]
    return [p for name, sub in subs.items() for p in _command_paths(sub, (*prefix, name))]


def test_every_command_has_help_with_an_example():
    names = _command_paths(typer.main.get_command(app))
    assert ["train-classifier"] in names and ["data", "build"] in names
    for name in names:
        result = run_cli(*name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, name


def test_bad_option_is_one_line_and_exit_2():
    result = run_ldm("train-classifier", "--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_user_error_is_one_line_and_exit_2(tmp_path):
    result = run_ldm("train-classifier", str(tmp_path / "missing.tar"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.tar" in lines[0]


def test_info_reports_device_and_optional_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"x")
    result = run_cli("info")
    assert result.exit_code == 0
    assert "torch" in result.output and "bf16 autocast" in result.output
    assert "found vgg16-397923af.pth" in result.output
    assert "missing alexnet-owt-7be5be79.pth" in result.output
