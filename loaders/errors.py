"""The one exception type the CLI turns into a single `error: ...` line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file): the message names what is wrong."""
