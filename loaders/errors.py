"""The one exception type the CLI turns into a single `error: ...` line and exit code 2."""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file): the message names what is wrong."""


def write_error(e: OSError, path: str | os.PathLike) -> Exception:
    """A write of `path` that failed for a reason the user can fix (a full disk or quota, a name too long for the
    file system) as a UserError naming the path and saying that nothing was half-written; any other OSError as
    it is. Callers raise it after taking back what the write had begun."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{path}: no space left on the device ({e.strerror}); nothing was half-written (a file "
                         "being replaced keeps its old content): free some space and run the command again")
    if e.errno == errno.ENAMETOOLONG:
        return UserError(f"{path}: a name in the path is too long for the file system ({e.strerror})")
    return e
