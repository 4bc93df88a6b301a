"""`mmtm eval-cur`: conditional utilisation rates (d_util) of a trained run, in one command."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmtm.cli.errors import user_errors


@user_errors
def eval_cur(
    run: Path = typer.Argument(..., help="Run folder made by `mmtm train`."),
    checkpoint: str = typer.Option("best", help="best | last | a path to a .pt file."),
    data: Optional[Path] = typer.Option(None, show_default="the run's", help="Dataset folder."),
    split: str = typer.Option("test", help="Split to measure: test | val | train."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, show_default="the run's", help="auto | dali | torch."),
    batch_size: Optional[int] = typer.Option(None, show_default="the run's, at least 32",
                                             help="Evaluation batch size."),
    as_json: bool = typer.Option(False, "--json", help="Print cur.json instead of a table."),
    probe: bool = typer.Option(False, "--probe", help="Also fit a linear probe on each frozen branch's pooled "
                                                      "features (train split) and report its accuracy on the split "
                                                      "beside the heads' accuracies."),
) -> None:
    """Measure u(m1|m0), u(m0|m1) and d_util (docs/science.md §2) and write RUN/cur.json (cur-last.json for last).

    Only the test split of best.pt and last.pt goes to cur.json and cur-last.json (what report and compare read);
    another split or checkpoint goes to a file that names both, e.g. cur-val-last.json.

    Pass 1 averages every MMTM's squeeze vectors over the training subset; pass 2 evaluates the split
    with regular fusion and with cross-modal flow off, both in float32. The checkpoint is only read.

    \b
    Examples:
      mmtm eval-cur runs/balanced
      mmtm eval-cur runs/balanced --checkpoint last --split val --json   # cur-val-last.json
      mmtm eval-cur runs/ogm --probe               # heads trained on CE(ŷ) only
    """
    from mmtm.analysis.eval_cur import evaluate_cur
    from mmtm.science.formulas import sign_sentence
    from mmtm.training.run import RunFolder

    r = evaluate_cur(run, checkpoint=checkpoint, data=str(data) if data else None, split=split,
                     device=device, loader=loader, batch_size=batch_size, probe=probe)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    first, second = (f"view {v}" for v in r["views"])
    table = Table(title=f"CUR of {run} ({checkpoint}, {split}, n={r['n']})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, label in (("acc", "accuracy of ŷ"), ("acc_m0", f"accuracy of m0's head ({first})"),
                       ("acc_m0_only", "  flow off"), ("acc_m1", f"accuracy of m1's head ({second})"),
                       ("acc_m1_only", "  flow off"), ("u_m1_given_m0", "u(m1|m0)"), ("u_m0_given_m1", "u(m0|m1)"),
                       ("d_util", "d_util"), ("probe_m0", f"probe on m0 ({first})"), ("probe_m0_only", "  flow off"),
                       ("probe_m1", f"probe on m1 ({second})"), ("probe_m1_only", "  flow off")):
        if key not in r:
            continue
        if r["single_view"] is not None and key not in ("acc", f"acc_m{r['single_view']}"):
            table.add_row(label, "—")  # one branch, one head, no cross-modal flow: the measure does not apply
        else:
            table.add_row(label, f"{r[key]:+.4f}" if key.startswith(("u_", "d_")) else f"{r[key]:.4f}")
    Console().print(table)
    if r["single_view"] is None:
        typer.echo(sign_sentence(first, second, "d_util"))
    typer.echo(f"wrote {RunFolder(run).cur_for(checkpoint, split)}")
