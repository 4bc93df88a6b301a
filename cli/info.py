"""`mmtm info`: what this machine gives a run (`mmtm.training.environment.facts`), as a table or one JSON object."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mmtm.cli.errors import user_errors

LABELS = {
    "version": "mmtm version", "commit": "git commit", "python": "Python", "torch": "torch",
    "torchvision": "torchvision", "dali": "DALI", "cuda_build": "CUDA torch was built with",
    "cuda_available": "CUDA available to torch", "torch_gpus": "GPUs torch sees", "dali_gpus": "GPUs DALI sees",
    "device": "mmtm train device", "loader": "mmtm train loader", "decode": "mmtm train JPEG decoding",
    "bf16": "mmtm train bf16 autocast", "cuda_graphs": "mmtm train CUDA graphs", "egl": "renderer (EGL)",
    "cpu_cores": "CPU cores", "cpu_cores_usable": "CPU cores this process may use",
}


def shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return f"{len(value)}: {', '.join(value)}"
    return str(value)


@user_errors
def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table.")) -> None:
    """Versions, the GPUs torch and DALI see, what `mmtm train` would use here by default (device, loader,
    decoding, bf16, CUDA graphs), the renderer's EGL status and the CPU cores.

    Run it after installing, and paste its --json output into a bug report.

    \b
    Examples:
      mmtm info
      mmtm info --json > machine.json
    """
    from mmtm.training.environment import facts

    found = facts()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table(title="mmtm info")
    table.add_column("fact")
    table.add_column("value")
    for key, value in found.items():
        table.add_row(LABELS[key], Text(shown(value)))  # Text: a value is not Rich markup
    Console().print(table)
