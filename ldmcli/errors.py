"""Errors a user can cause: one line on stderr and exit code 2, never a traceback.

UserError is a ClickException so that Typer handles it the same way in the console script and in
tests run through typer's CliRunner.
"""

import sys

import click


class UserError(click.ClickException):
    """Bad input from the user: a path, an option, a file. Never a bug in ldmcli."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)
