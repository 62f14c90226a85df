"""The `ldm` program: one Typer app, one module per command."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from ldmcli import __version__, allocator
from ldmcli.errors import UserError


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(TyperGroup):
    """Every error a user can cause ends as one line and a non-zero exit, never a traceback or a panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except UserError as err:
            _fail(str(err), 2)
        except Exception as err:
            if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
                raise
            ctx = getattr(err, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _fail(err.format_message() + hint, err.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="ldm",
    cls=_Group,
    help="Train and run Latent Diffusion Models end to end.\n\n"
    "Example: ldm data build shapes --out data/shapes && ldm data info data/shapes",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ldm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Train and run Latent Diffusion Models end to end."""


def _register() -> None:
    from ldmcli.cli import convert, data, demo, encode, eval, info, sample, train_ae, train_classifier, train_diffusion, upscale

    app.add_typer(data.app, name="data")
    app.command("info")(info.info)
    app.command("train-classifier")(train_classifier.train_classifier)
    app.command("train-ae")(train_ae.train_ae)
    app.command("encode")(encode.encode)
    app.command("convert")(convert.convert)
    app.command("eval")(eval.eval_command)
    app.command("train-diffusion")(train_diffusion.train_diffusion)
    app.command("sample")(sample.sample)
    app.command("upscale")(upscale.upscale)
    app.command("demo")(demo.demo)


_register()


def run() -> None:
    """Console entry point: malloc set for reuse (ldmcli/allocator.py) before any tensor exists."""
    try:
        allocator.configure()
    except ValueError as err:
        _fail(str(err), 2)
    app()
