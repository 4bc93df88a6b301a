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
    out: Path = typer.Option(..., "--out", help="Folder for the runs, comparison.md/.json and plots."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma-separated seeds; seed k of every policy shares its "
                                                "initial weights and data order."),
    policies: Optional[str] = typer.Option(None, help="Comma-separated policies "
                                                      "(default: vanilla,balanced,random,flipped)."),
    preset: str = typer.Option("demo", help="demo (2-core CPU) or paper (SPEC §5)."),
    config: Optional[Path] = typer.Option(None, help="JSON config overriding the preset."),
    epochs: Optional[int] = typer.Option(None, help="Override the preset's epochs."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, help="auto | dali | torch."),
) -> None:
    """Compare training policies over seeds: train, eval-cur (best and last checkpoint), tables and plots.

    OUT/comparison.md gives, per policy, mean ± std and a 95% bootstrap interval of test accuracy, A(f0), A(f1),
    d_util and d_speed (at an equal number of regular steps, and at the end), and the paired per-seed
    differences against vanilla; OUT/comparison.json holds the same numbers.

    Re-running the same command resumes: finished runs are kept, unfinished ones continue.

    \b
    Examples:
      mmtm compare --data demo/data --out demo/compare
      mmtm compare --data demo/data --out c1 --seeds 0 --policies vanilla,pmr
    """
    from mmtm.compare import DEFAULT_POLICIES, run_comparison

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    policy_list = DEFAULT_POLICIES if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip())
    if not seed_list or not policy_list:
        raise UserError("--seeds and --policies must not be empty")
    if len(set(seed_list)) != len(seed_list) or len(set(policy_list)) != len(policy_list):
        raise UserError("--seeds and --policies must not repeat an entry")
    path = run_comparison(str(data), out, seeds=seed_list, policies=policy_list, preset=preset,
                          config_file=str(config) if config else None, epochs=epochs, device=device, loader=loader)
    typer.echo(f"wrote {path}")
