"""`mmtm ume`: the uni-modal ensemble (Du et al., ICML 2023) of two finished single-view runs, evaluated."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from mmtm.cli.errors import user_errors


@user_errors
def ume(
    run0: Path = typer.Argument(..., help="The single-view run of the first of the views (mmtm train --single-view)."),
    run1: Path = typer.Argument(..., help="The single-view run of the second of the views, on the same data."),
    checkpoint: str = typer.Option("best", help="best | last, of both runs."),
    split: str = typer.Option("test", help="Split to measure: test | val | train."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(32, help="Evaluation batch size."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Accuracy of UME, the average of the two single-view networks' logits, beside each network's own.

    UME trains nothing: its members are the single-view baselines (`mmtm compare --baselines` trains them per seed).
    Both run in float32; nothing is written.

    \b
    Examples:
      mmtm ume cmp/single-view0-s0 cmp/single-view1-s0
      mmtm ume runs/front runs/rear --split val --json
    """
    from mmtm.loaders.errors import UserError
    from mmtm.methods.ume import ensemble_accuracy

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    r = ensemble_accuracy(run0, run1, checkpoint=checkpoint, split=split, device=device, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(f"UME of {run0} and {run1} ({checkpoint}, {split}, n={r['n']}): accuracy {r['acc']:.4f} "
               f"(first alone {r['acc_m0']:.4f}, second alone {r['acc_m1']:.4f})")
