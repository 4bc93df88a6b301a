"""Where a command may write, checked before it starts working: a bad output path then fails at once with one
line, not after a whole prep, training epoch, evaluation or benchmark, and nothing is created on the way."""
from __future__ import annotations

import os
from pathlib import Path

from mmtm.loaders.atomic import check_names_fit
from mmtm.loaders.errors import UserError


def check_output_folder(path: str | os.PathLike, what: str = "--out", *, replaced: bool = False) -> Path:
    """`path` is, or can be made as, a folder to write into. replaced: the folder is built beside `path` and
    renamed into place (`mmtm.loaders.atomic.AtomicDir`), so its parent must be writable as well."""
    path = Path(path)
    check_names_fit(path, what, atomic=replaced)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {what} exists and is not a folder")
    _check_writable(path.parent if replaced or not path.exists() else path, path, what)
    if replaced and path.exists():
        _check_writable(path, path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """`path` can be written atomically: it is not a folder, and its folder is (or can be made) writable."""
    path = Path(path)
    check_names_fit(path, what)
    if path.is_dir():
        raise UserError(f"{path}: {what} is a folder, not a file")
    _check_writable(path.parent, path, what)
    return path


def _check_writable(folder: Path, path: Path, what: str) -> None:
    """`folder`, or the nearest part of it that exists (the rest would be made), is a folder this process may
    write in."""
    existing = folder
    while not existing.exists():  # a path under a file does not exist either: the loop stops at that file
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{path}: {what} lies under {existing}, which is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {what} cannot be written: no write permission in {existing}")
