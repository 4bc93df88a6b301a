"""Read run folders and write plots plus a markdown summary of them."""
from __future__ import annotations

import math
from pathlib import Path

from loaders.atomic import atomic_write_text
from loaders.output import check_output_folder
from mmtm import plots
from mmtm.run import load_run


def final_d_speed(run: dict) -> float:
    return float(run["steps"][-1]["d_speed"]) if run["steps"] else math.nan


def summary_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        cur = r["cur"] or {}
        rows.append({"run": r["name"], "policy": r["config"]["policy"], "seed": r["config"]["seed"],
                     "epochs": len(r["epochs"]), "acc": cur.get("acc", math.nan),
                     "acc_m0": cur.get("acc_m0", math.nan), "acc_m1": cur.get("acc_m1", math.nan),
                     "u_m1_given_m0": cur.get("u_m1_given_m0", math.nan),
                     "u_m0_given_m1": cur.get("u_m0_given_m1", math.nan), "d_util": cur.get("d_util", math.nan),
                     "final_d_speed": final_d_speed(r),
                     "rebalance_steps": sum(1 for s in r["steps"] if s["mode"] != "regular")})
    return rows


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [plots.plot_d_speed(runs, out / "d_speed.png"), plots.plot_speeds(runs, out / "speeds.png"),
             plots.plot_accuracy(runs, out / "accuracy.png")]
    if any(r["cur"] for r in runs):
        paths.append(plots.plot_cur(runs, out / "cur.png"))
    return paths


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = check_output_folder(out)
    runs = [load_run(d) for d in run_dirs]  # every run checked before the first figure is drawn
    plots = write_plots(runs, out)
    columns = ["run", "policy", "seed", "epochs", "acc", "acc_m0", "acc_m1", "u_m1_given_m0", "u_m0_given_m1",
               "d_util", "final_d_speed", "rebalance_steps"]
    text = ("# mmtm report\n\nTest-split CUR from each run's `cur.json` (nan where `mmtm eval-cur` was not run); "
            "final d_speed (d_CLS) from `steps.csv`.\n\n" + markdown_table(summary_rows(runs), columns) + "\n"
            + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
    atomic_write_text(out / "summary.md", text)
    return out / "summary.md"
