"""One checkpoint dict per file, written atomically and read without running code.

A checkpoint holds tensors and plain data only (state dicts, numbers, strings, lists, dicts), so
`torch.load(..., weights_only=True)` can read it: a checkpoint from elsewhere never runs code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mmtm.loaders.atomic import atomic_write_bytes
from mmtm.loaders.errors import UserError


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
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


def load_weights(net: torch.nn.Module, ckpt: dict, path: str | os.PathLike) -> None:
    """Load the checkpoint's model weights into `net`; weights of another shape are a UserError naming the file."""
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line),
                     str(e).strip().splitlines()[0])
        raise UserError(f"{path}: its weights do not fit the network its config describes ({first})") from None
