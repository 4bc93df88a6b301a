"""Read run folders and write plots plus a markdown summary of them.

d_speed is stated two ways: after each run's last step, and after the same number of regular steps in every run
(the fewest any of the runs made). A policy that re-balances often makes few regular steps, and its final
cumulative d_speed rests on less evidence; only the second comparison weighs the runs alike.
"""
from __future__ import annotations

import math
from pathlib import Path

from loaders.atomic import atomic_write_text
from loaders.output import check_output_folder
from mmtm import plots
from mmtm.fusion import REGULAR
from mmtm.run import load_run

SUMMARY_COLUMNS = ["run", "policy", "seed", "epochs", "acc", "acc_last", "acc_m0", "acc_m1", "u_m1_given_m0",
                   "u_m0_given_m1", "d_util", "d_util_last", "d_speed_equal", "d_speed_final", "d_speed_window_final",
                   "regular_steps", "rebalance_steps"]


def regular_steps(run: dict) -> int:
    return sum(1 for s in run["steps"] if s["mode"] == REGULAR)


def d_speed_after_regular_steps(run: dict, n: int) -> float:
    """The cumulative d_speed right after the run's n-th regular step (nan if it made fewer)."""
    seen = 0
    for s in run["steps"]:
        seen += s["mode"] == REGULAR
        if seen == n:
            return float(s["d_speed"])
    return math.nan


def summary_rows(runs: list[dict]) -> tuple[list[dict], int]:
    """One row per run, and the equal number of regular steps at which `d_speed_equal` is read."""
    n_equal = min(regular_steps(r) for r in runs)
    rows = []
    for r in runs:
        cur, last = r["cur"] or {}, r["cur_last"] or {}
        final = r["steps"][-1] if r["steps"] else {}
        rows.append({"run": r["name"], "policy": r["config"]["policy"], "seed": r["config"]["seed"],
                     "epochs": len(r["epochs"]), "acc": cur.get("acc", math.nan), "acc_last": last.get("acc", math.nan),
                     "acc_m0": cur.get("acc_m0", math.nan), "acc_m1": cur.get("acc_m1", math.nan),
                     "u_m1_given_m0": cur.get("u_m1_given_m0", math.nan),
                     "u_m0_given_m1": cur.get("u_m0_given_m1", math.nan), "d_util": cur.get("d_util", math.nan),
                     "d_util_last": last.get("d_util", math.nan),
                     "d_speed_equal": d_speed_after_regular_steps(r, n_equal),
                     "d_speed_final": float(final.get("d_speed", math.nan)),
                     "d_speed_window_final": float(final.get("d_speed_window", math.nan)),
                     "regular_steps": regular_steps(r), "rebalance_steps": len(r["steps"]) - regular_steps(r)})
    return rows, n_equal


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [plots.plot_d_speed(runs, out / "d_speed.png"),
             plots.plot_d_speed_by_regular_steps(runs, out / "d_speed_by_regular_steps.png"),
             plots.plot_speeds(runs, out / "speeds.png"), plots.plot_accuracy(runs, out / "accuracy.png")]
    if any(r["cur"] for r in runs):
        paths.append(plots.plot_cur(runs, out / "cur.png"))
    return paths


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = check_output_folder(out)
    runs = [load_run(d) for d in run_dirs]  # every run checked before the first figure is drawn
    plots = write_plots(runs, out)
    rows, n_equal = summary_rows(runs)
    text = ("# mmtm report\n\nTest-split CUR from each run's `cur.json` (best.pt) and `cur-last.json` (last.pt); nan "
            "where `mmtm eval-cur` was not run. d_speed (d_CLS) from `steps.csv`: `d_speed_equal` is the cumulative "
            f"d_speed after {n_equal} regular steps in every run (the fewest any run made), `d_speed_final` after the "
            "last step, `d_speed_window_final` over the last K regular steps.\n\n"
            + markdown_table(rows, SUMMARY_COLUMNS) + "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
    atomic_write_text(out / "summary.md", text)
    return out / "summary.md"
