"""`mmtm report`: plots and a markdown summary of one or more runs."""
from __future__ import annotations

from pathlib import Path

import typer

from mmtm.cli.errors import user_errors


@user_errors
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders made by `mmtm train` (and `mmtm eval-cur`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG plots and summary.md."),
) -> None:
    """Plot d_speed, s(m1|m0), s(m0|m1), accuracies and u(·|·) of runs; write summary.md.

    Plots: d_speed over steps with the re-balancing steps marked, s(m1|m0) and s(m0|m1), train/val accuracy
    per head, and a bar chart of u(m1|m0), u(m0|m1) per run (runs with a cur.json).

    \b
    Examples:
      mmtm report runs/vanilla runs/balanced --out report
      mmtm report demo/compare/*-s0 --out demo/report
    """
    from mmtm.analysis.report import stale_results, write_report

    stale = stale_results(runs)
    typer.echo(f"wrote {write_report(runs, out)}")
    for line in stale:
        typer.echo(f"warning: {line}", err=True)
