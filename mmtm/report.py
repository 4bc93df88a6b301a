"""Rows and figures of runs, read from their evidence (mmtm/evidence.py), for `mmtm report` and `mmtm compare`.

d_speed is stated three ways: after each run's last step (`d_speed_final`); after the same number of regular steps in
every run (`d_speed_equal`, the fewest any of the runs made: a policy that re-balances often makes few regular
steps, and its final cumulative d_speed rests on less evidence); and at the end of the same epoch in every run
(`d_speed_stage`, the epoch that ends STAGE of training: the same stage of training, whatever the evidence). The
first two compare equal evidence at different stages, the last equal stages on different evidence.
"""
from __future__ import annotations

import math
from pathlib import Path

from loaders.atomic import atomic_write_text
from loaders.output import check_output_folder
from mmtm import evidence, plots, stats
from mmtm.run import RunFolder

STAGE = 0.5  # d_speed_stage: at the end of the epoch that completes this fraction of training
BASELINES = ("single-view0", "single-view1")  # what `kind` calls the single-view runs
PROXY = (("d_speed_final", "d_util"), ("d_speed_stage", "d_util"), ("d_speed_final", "d_util_last"),
         ("d_speed_stage", "d_util_last"))
PROXY_COLUMNS = ["d_speed", "d_util", "n", "Spearman ρ [95% CI]", "p"]
# What a single-view run does not have (one branch: no cross-modal flow to turn off, no second branch to compare
# speeds with): None in its row, `—` in a table.
TWO_VIEW_ONLY = ("u_m1_given_m0", "u_m0_given_m1", "d_util", "d_util_last", "d_util_ci", "d_util_floor",
                 "d_util_above_floor", "d_speed_equal", "d_speed_stage", "d_speed_final")
SUMMARY_COLUMNS = ["run", "policy", "seed", "epochs", "acc", "acc_last", "acc_m0", "acc_m1", "u_m1_given_m0",
                   "u_m0_given_m1", "d_util", "d_util_last", "d_speed_equal", "d_speed_stage", "d_speed_final",
                   "regular_steps", "rebalance_steps"]


def stage_epoch(epochs: int, stage: float = STAGE) -> int:
    """The (0-based) epoch at whose end `stage` of an `epochs`-epoch run is done: 7 of 0..14 for 15 epochs."""
    return max(0, math.ceil(stage * epochs) - 1)


def kind(run: dict) -> str:
    """What a run is in a table: its policy, or `single-view0`/`single-view1` for a baseline."""
    slot = run["config"].get("single_view")
    return run["config"]["policy"] if slot is None else f"single-view{slot}"


def cell_label(run: dict) -> str:
    """The run's grid cell as `key=value,...` ("" outside a grid)."""
    return ",".join(f"{k}={v}" for k, v in run["summary"].get("cell", {}).items())


def _num(value) -> float:
    return math.nan if value is None else float(value)


def d_util_floor(acc_m0: float, acc_m1: float, u10: float, u01: float, limits) -> float:
    """How close to 0 the data lets |d_util| get, given a run's accuracies: a view alone reaches at most its
    attainable accuracy c, so u(m0|m1) ≥ 1 − c1/A(f1) and d_util ≤ u(m1|m0) − (1 − c1/A(f1)); likewise for view 0.
    0 when neither bound binds; nan without recorded limits."""
    if not limits or None in limits or any(math.isnan(x) for x in (acc_m0, acc_m1, u10, u01)) or not acc_m0 * acc_m1:
        return math.nan
    c0, c1 = limits
    return max(0.0, (1 - c1 / acc_m1) - u10, (1 - c0 / acc_m0) - u01)


def epochs_to_reach(run: dict, share: float = 0.9) -> float:
    """The number of epochs after which validation accuracy first reached `share` of the run's test accuracy
    (best.pt); nan if it never did."""
    target = share * _num((run["cur"] or {}).get("acc"))
    for i, e in enumerate(run["epochs"]):
        if float(e["val_acc"]) >= target:
            return float(i + 1)
    return math.nan


def summary_rows(runs: list[dict]) -> tuple[list[dict], int, int]:
    """One row per run, the equal number of regular steps at which `d_speed_equal` is read, and the epoch at whose
    end `d_speed_stage` is read. Single-view baselines have none of TWO_VIEW_ONLY (None) and do not set the equal
    count."""
    two_view = [r for r in runs if r["config"].get("single_view") is None]
    n_equal = min((r["summary"]["regular_steps"] for r in two_view), default=0)
    stage = stage_epoch(min((len(r["epochs"]) for r in runs), default=1))
    rows = []
    for r in runs:
        cur, last, s = r["cur"] or {}, r["cur_last"] or {}, r["summary"]
        by_regular = s["d_speed_by_regular_step"]
        intervals = cur.get("intervals", {})
        acc_m0, acc_m1 = _num(cur.get("acc_m0")), _num(cur.get("acc_m1"))
        u10, u01 = _num(cur.get("u_m1_given_m0")), _num(cur.get("u_m0_given_m1"))
        job = s.get("job", {})
        rows.append({
            "run": r["name"], "cell": cell_label(r), "policy": kind(r), "seed": r["config"]["seed"],
            "epochs": len(r["epochs"]), "acc": _num(cur.get("acc")), "acc_last": _num(last.get("acc")),
            "acc_m0": acc_m0, "acc_m1": acc_m1, "u_m1_given_m0": u10, "u_m0_given_m1": u01,
            "d_util": _num(cur.get("d_util")), "d_util_last": _num(last.get("d_util")),
            "acc_ci": intervals.get("acc"), "d_util_ci": intervals.get("d_util"),
            "d_util_floor": (floor := d_util_floor(acc_m0, acc_m1, u10, u01, s.get("view_limits"))),
            "d_util_above_floor": abs(_num(cur.get("d_util"))) - floor,
            "d_speed_equal": _num(by_regular[n_equal - 1]) if 0 < n_equal <= len(by_regular) else math.nan,
            "d_speed_stage": _num(float(r["epochs"][stage]["d_speed"])) if stage < len(r["epochs"]) else math.nan,
            "d_speed_final": _num(s["trace"]["d_speed"][-1]) if s["trace"]["d_speed"] else math.nan,
            "regular_steps": s["regular_steps"], "rebalance_steps": s["steps"] - s["regular_steps"],
            "rebalance_m0_steps": s["rebalance_m0_steps"], "rebalance_m1_steps": s["rebalance_m1_steps"],
            "epochs_to_90": epochs_to_reach(r),
            "minutes": round(sum(float(e["seconds"]) for e in r["epochs"]) / 60, 3),
            "launcher": job.get("launcher"), "host": job.get("host"), "device": job.get("device"),
        })
        if r["config"].get("single_view") is not None:
            rows[-1] |= dict.fromkeys(TWO_VIEW_ONLY)
    return rows, n_equal, stage


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
            return f"[{v[0]:.3f}, {v[1]:.3f}]"
        return "—" if v is None else str(v)
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def proxy_table(rows: list[dict]) -> list[dict]:
    """Per cell: Spearman's ρ across all two-view runs (policies × seeds) of d_speed (final, and at half of
    training) with d_util (best.pt and last.pt)."""
    table = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        sel = [r for r in rows if r["cell"] == cell and r["policy"] not in BASELINES]
        for x, y in PROXY:
            s = stats.spearman([r[x] for r in sel], [r[y] for r in sel])
            ci = "[—]" if s["ci"] is None else f"[{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}]"
            table.append({"cell": cell, "d_speed": x, "d_util": y, "n": s["n"],
                          "Spearman ρ [95% CI]": f"{s['rho']:+.2f} {ci}", "p": stats.fmt_p(s["p"])})
    return table


def write_plots(runs: list[dict], rows: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    two_view = [r for r in runs if r["config"].get("single_view") is None]
    paths = [plots.plot_d_speed(two_view, out / "d_speed.png"),
             plots.plot_d_speed_by_regular_steps(two_view, out / "d_speed_by_regular_steps.png"),
             plots.plot_speeds(two_view, out / "speeds.png")] if two_view else []  # single-view runs have no d_speed
    paths.append(plots.plot_accuracy(runs, out / "accuracy.png"))
    if any(r["cur"] for r in two_view):
        paths.append(plots.plot_cur(two_view, out / "cur.png"))
        paths.append(plots.plot_speed_vs_util(rows, out / "d_speed_vs_d_util.png"))
    return paths


def stale_results(run_dirs: list[str | Path]) -> list[str]:
    """One warning per cur.json or cur-last.json older than the checkpoint it measures: the run was resumed or
    trained again after eval-cur, so the file holds the numbers of a checkpoint that is gone."""
    found = []
    for d in run_dirs:
        run = RunFolder(d)
        for which, cur in (("best", run.cur), ("last", run.cur_last)):
            ckpt = run.checkpoint(which)
            if cur.is_file() and ckpt.is_file() and cur.stat().st_mtime < ckpt.stat().st_mtime:
                found.append(f"{cur} is older than {ckpt}, the checkpoint it measures: its numbers are of an earlier "
                             f"one; run `mmtm eval-cur {run.root} --checkpoint {which}` again")
    return found


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = check_output_folder(out)
    runs = [evidence.load(d, complete=False) for d in run_dirs]  # every run checked before the first figure is drawn
    rows, n_equal, stage = summary_rows(runs)
    figures = write_plots(runs, rows, out)
    text = ("# mmtm report\n\nTest-split CUR from each run's `cur.json` (best.pt) and `cur-last.json` (last.pt); nan "
            "where `mmtm eval-cur` was not run. d_speed (d_CLS): `d_speed_equal` is the cumulative d_speed after "
            f"{n_equal} regular steps in every run (the fewest any run made), `d_speed_stage` at the end of epoch "
            f"{stage + 1} (half of training), `d_speed_final` after the last step.\n\n"
            + markdown_table(rows, SUMMARY_COLUMNS)
            + "\nDoes d_speed predict d_util? Spearman's rank correlation across the two-view runs, 95% Fisher-z "
            "interval:\n\n" + markdown_table(proxy_table(rows), PROXY_COLUMNS) + "\n"
            + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    atomic_write_text(out / "summary.md", text)
    return out / "summary.md"
