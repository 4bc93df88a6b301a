"""Every failure the user can cause ends as one `error: ...` line on stderr and exit code 2: the project's
UserError (`user_errors`) and Click's usage errors (`OneLineErrors`)."""
from __future__ import annotations

import functools
import sys

import typer

from mmtm.cli.help import ReadableGroup
from mmtm.loaders.errors import UserError


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
    return wrapper


class OneLineErrors(ReadableGroup):
    """The app's command group: a usage error (a value of the wrong type, an unknown option or command, a missing
    argument) prints one `error:` line like every other error, not Click's usage box; --help is ReadableGroup's."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # Click's exceptions derive from it
            if type(e).__name__ != "NoArgsIsHelpError":  # `mmtm` alone: the help is printed already
                print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
            code = 2
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)
