"""The `mmtm` Typer app: registers one module per command; no science here."""
from __future__ import annotations

from mmtm.cli import bench, compare, eval_cur, info, prep, report, train, ume
from mmtm.cli.errors import OneLineErrors
from mmtm.cli.help import App

app = App(
    name="mmtm",
    help="Measure and fix greedy learning in two-view MMTM networks (Wu et al., ICML 2022).\n\n"
    "Typical flow on a CPU: `mmtm prep synthetic --out data` → `mmtm train --data data --out runs/v --preset demo` "
    "→ `mmtm eval-cur runs/v` → `mmtm report runs/v --out report`. `--preset` defaults to auto: demo on a CPU, "
    "paper (the paper's 300-epoch protocol) on a GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)
app.command("prep")(prep.prep)
app.command("train")(train.train)
app.command("eval-cur")(eval_cur.eval_cur)
app.command("report")(report.report)
app.command("compare")(compare.compare)
app.command("info")(info.info)
app.command("ume")(ume.ume)
app.add_typer(bench.app, name="bench")


def main() -> None:
    app()
