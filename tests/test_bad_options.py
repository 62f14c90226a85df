"""Every command, found by walking the app's command tree, ends a bad command line with exit code 2 and
one `error:` line: an unknown option, and a value of the wrong type or out of range."""

import pytest
import typer
from conftest import run_cli
from test_bad_input import one_error_line

from ldmcli.cli.main import app


def _paths(command, prefix=()):
    subs = getattr(command, "commands", None)
    if not subs:
        return [prefix]
    return [p for name, sub in subs.items() for p in _paths(sub, (*prefix, name))]


COMMANDS = _paths(typer.main.get_command(app))

# One bad value per command, with a word the message must hold. A new command needs an entry here.
BAD_VALUES = {
    ("info",): (["surplus"], "unexpected extra argument"),
    ("train-classifier",): (["x.tar", "--out", "{tmp}/r", "--set", "train.steps=many"], "'train.steps' must be an integer"),
    ("train-ae",): (["x.tar", "--out", "{tmp}/r", "--set", "loss.perceptual=alexnet"], "'loss.perceptual' must be one of"),
    ("encode",): (["x.tar", "--ae", "{tmp}", "--out", "{tmp}/l", "--batch-size", "many"], "Invalid value for '--batch-size'"),
    ("convert",): (["{tmp}", "--out", "{tmp}/o", "--to", "onnx"], "'onnx' is not one of"),
    ("eval",): (["x.tar", "--recon", "--ae", "{tmp}", "--precision", "fp8"], "--precision must be one of auto, bf16, fp32"),
    ("train-diffusion",): (["x.tar", "--out", "{tmp}/r", "--set", "train.betas=[0.9]"], "'train.betas' must have 2 items"),
    ("sample",): (["--model", "{tmp}", "--steps", "1.5"], "Invalid value for '--steps'"),
    ("data", "build"): (["digits", "--out", "{tmp}/d", "--split", "test"], "'test' is not one of"),
    ("data", "info"): (["{tmp}/nothing-*.tar"], "no shard matches"),
    ("demo",): (["--out", "{tmp}/d", "--recipes", "{tmp}/none"], "demo recipe"),
    ("upscale",): (["{tmp}", "--model", "{tmp}", "--steps", "many"], "Invalid value for '--steps'"),
}


# Options added to a command after its entry above: one bad value each.
NEWER_OPTIONS = [
    (("train-diffusion",), ["x.tar", "--out", "{tmp}/r", "--task", "colourise"], "unknown --task 'colourise'"),
    (("sample",), ["--model", "{tmp}", "--layout"], "Option '--layout' requires an argument"),
    (("eval",), ["--layout", "--scenes", "many"], "Invalid value for '--scenes'"),
    (("eval",), ["--layout"], "--layout needs --model MODEL_DIR"),
    (("sample",), ["--model", "{tmp}", "--eta", "some"], "Invalid value for '--eta'"),
]


def test_every_command_has_a_bad_value_case():
    assert sorted(BAD_VALUES) == sorted(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_unknown_option(path):
    one_error_line(run_cli(*path, "--no-such-option"), "No such option: --no-such-option")


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_bad_value(path, tmp_path):
    args, needle = BAD_VALUES[path]
    one_error_line(run_cli(*path, *(a.format(tmp=tmp_path) for a in args)), needle)


@pytest.mark.parametrize("path, args, needle", NEWER_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, (list, tuple)) else v)
def test_bad_value_of_a_newer_option(path, args, needle, tmp_path):
    one_error_line(run_cli(*path, *(a.format(tmp=tmp_path) for a in args)), needle)
