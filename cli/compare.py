"""`mmtm compare`: vanilla vs balanced vs random over seeds, with eval-cur, plots and a table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.errors import user_errors
from loaders.errors import UserError


@user_errors
def compare(
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (from `mmtm prep`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the runs, comparison.md and plots."),
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
    policies: str = typer.Option("vanilla,balanced,random", help="Comma-separated policies to train."),
    preset: str = typer.Option("demo", help="demo (2-core CPU) or paper (SPEC §5)."),
    config: Optional[Path] = typer.Option(None, help="JSON config overriding the preset."),
    epochs: Optional[int] = typer.Option(None, help="Override the preset's epochs."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, help="auto | dali | torch."),
) -> None:
    """Compare vanilla, balanced and random training over seeds: train, eval-cur, table and plots.

    Writes mean ± std of test accuracy, per-head accuracy, |d_util| and final |d_speed| to OUT/comparison.md.

    Re-running the same command resumes: finished runs are kept, unfinished ones continue.

    \b
    Examples:
      mmtm compare --data demo/data --out demo/compare
      mmtm compare --data demo/data --out demo/compare3 --seeds 0,1,2
    """
    from mmtm.compare import run_comparison

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    policy_list = tuple(p.strip() for p in policies.split(",") if p.strip())
    if not seed_list or not policy_list:
        raise UserError("--seeds and --policies must not be empty")
    path = run_comparison(str(data), out, seeds=seed_list, policies=policy_list, preset=preset,
                          config_file=str(config) if config else None, epochs=epochs, device=device, loader=loader)
    typer.echo(f"wrote {path}")
