"""Turn a UserError into one `error: ...` line on stderr and exit code 2."""
from __future__ import annotations

import functools
import sys

import typer

from loaders.errors import UserError


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
