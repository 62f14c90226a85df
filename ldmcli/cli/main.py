"""The `ldm` program: one Typer app, one module per command."""

from __future__ import annotations

import typer

from ldmcli import __version__

app = typer.Typer(
    name="ldm",
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
    from ldmcli.cli import data, train_classifier

    app.add_typer(data.app, name="data")
    app.command("train-classifier")(train_classifier.train_classifier)


_register()


def run() -> None:
    """Console entry point."""
    app()
