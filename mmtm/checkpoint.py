"""One checkpoint dict per file, written atomically and read without running code.

A checkpoint holds tensors and plain data only (state dicts, numbers, strings, lists, dicts), so
`torch.load(..., weights_only=True)` can read it: a checkpoint from elsewhere never runs code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mmtm.errors import UserError


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(ckpt: dict, path: Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable mmtm checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path}: not an mmtm checkpoint (no model/config entries)")
    return ckpt
