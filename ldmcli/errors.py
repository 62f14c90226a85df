"""Errors a user can cause. The `ldm` app prints them as one line on stderr and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a path, an option, a file. Never a bug in ldmcli."""
