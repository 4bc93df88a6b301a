"""What this machine gives a run, as one JSON-serialisable dict (`facts`): versions, the GPUs torch and DALI see,
what `mmtm train` would choose here by default, the renderer's EGL status and the CPU cores. `mmtm info` shows
it; a command's JSON output can carry it."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

from mmtm.loaders.device import resolve_device
from mmtm.loaders.factory import resolve_backend
from mmtm.training.config import resolve
from mmtm.training.hardware import Compute, graph_steps
from mmtm.training.policy import runs_in_cuda_graphs
from mmtm.training.registry import make_policy
from mmtm.analysis.sweep import usable_cores

PROJECT = Path(__file__).resolve().parents[2]  # the folder holding loaders/, mmtm/ and cli/
# In a child process: a GL driver that crashes or hangs takes only the child with it.
EGL_PROBE = "from mmtm.loaders.prep.render import gl_context; print(gl_context().info['GL_RENDERER'])"
EGL_TIMEOUT_S = 20


def facts() -> dict:
    """Each fact a string, number, bool or list of strings; "none" where no GPU is seen. About 0.2 s once torch
    and DALI are imported, most of it the EGL probe's child process."""
    cfg = resolve()  # `mmtm train`'s defaults: one process, preset paper, policy vanilla, device and loader auto
    device = resolve_device(cfg.device)
    loader = resolve_backend(cfg.loader)
    dali_version, dali_gpus = _dali()
    torch_gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                  if torch.cuda.is_available() else [])
    return {
        "version": _version(),
        "commit": _commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": dali_version,
        "cuda_build": torch.version.cuda or "none",
        "cuda_available": torch.cuda.is_available(),
        "torch_gpus": torch_gpus or "none",
        "dali_gpus": dali_gpus or "none",
        "device": str(device),
        "loader": loader,
        "decode": _decode(loader, device),
        "bf16": Compute.of(device, amp=cfg.amp, channels_last=cfg.channels_last).amp,
        "cuda_graphs": graph_steps(cfg.cuda_graphs, device, 1, runs_in_cuda_graphs(make_policy(cfg))),
        "egl": _egl(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
    }


def _version() -> str:
    try:
        return importlib.metadata.version("mmtm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _commit() -> str:
    """The checkout's short commit, or "unknown" outside a git checkout (an installed copy) or without git."""
    if not (PROJECT / ".git").exists():  # a folder in a clone, a file in a worktree
        return "unknown"
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                           timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def _dali() -> tuple[str, int]:
    """DALI's version and the GPUs it sees."""
    try:
        import nvidia.dali
        import nvidia.dali.backend
    except ImportError:
        return "not installed", 0
    return nvidia.dali.__version__, nvidia.dali.backend.GetCUDADeviceCount()


def _decode(loader: str, device: torch.device) -> str:
    """Where the loader decodes JPEG (loaders/dali_backend.py, loaders/torch_backend.py)."""
    if device.type != "cuda":
        return "cpu"
    return "mixed (GPU nvJPEG)" if loader == "dali" else "GPU nvJPEG via torchvision (PNG: cpu)"


def _egl() -> str:
    """'ok (<GL renderer>)', or the one line that says why the renderer has no context."""
    try:
        r = subprocess.run([sys.executable, "-c", EGL_PROBE], cwd=PROJECT, capture_output=True, text=True,
                           timeout=EGL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no context within {EGL_TIMEOUT_S} s"
    if r.returncode == 0:
        return f"ok ({r.stdout.strip()})"
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else f"the probe exited with code {r.returncode}"
