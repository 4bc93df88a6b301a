"""Which device a command runs on: the one place that turns `auto | cpu | cuda[:i]` into a torch.device."""
from __future__ import annotations

import torch

from mmtm.loaders.errors import UserError

DEVICES = ("auto", "cpu", "cuda")  # plus cuda:<index>


def check_device_name(name: str) -> str:
    """`name` if it is auto, cpu, cuda or cuda:<index>; a UserError otherwise (no hardware is asked)."""
    base, _, index = str(name).partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:<index>")
    return str(name)


def resolve_device(name: str | torch.device) -> torch.device:
    """auto = the current CUDA device when there is one, else the CPU; cuda without a GPU is a UserError."""
    if isinstance(name, torch.device):
        return name
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    return dev
