"""Rows and figures of runs, read from their evidence (mmtm/analysis/evidence.py), for `mmtm report` and `mmtm compare`.

d_speed is stated three ways: after each run's last step (`d_speed_final`); after the same number of regular steps in
every run (`d_speed_equal`, the fewest any of the runs made: a policy that re-balances often makes few regular
steps, and its final cumulative d_speed rests on less evidence); and at the end of the same epoch in every run
(`d_speed_stage`, the epoch that ends STAGE of training: the same stage of training, whatever the evidence). The
first two compare equal evidence at different stages, the last equal stages on different evidence.
"""
from __future__ import annotations

import math
from pathlib import Path

from mmtm.loaders.atomic import atomic_write_text
from mmtm.loaders.output import check_output_folder
from mmtm.analysis import evidence, plots, stats
from mmtm.science.formulas import sign_sentence
from mmtm.training.run import RunFolder

STAGE = 0.5  # d_speed_stage: at the end of the epoch that completes this fraction of training
BASELINES = ("single-view0", "single-view1")  # what `kind` calls the single-view runs
PROXY = (("d_speed_final", "d_util"), ("d_speed_stage", "d_util"), ("d_speed_final", "d_util_last"),
         ("d_speed_stage", "d_util_last"))
PROXY_COLUMNS = ["runs", "d_speed", "d_util", "n", "Spearman ρ [95% CI]", "p"]
POOLED = "across policies (includes policy effects)"
STRATIFIED = "within policies (mean ρ, stratified permutation)"
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


def d_util_floor(acc_m0: float, acc_m1: float, u10: float, u01: float, best) -> float:
    """How close to 0 |d_util| can get given this run's A(f1) and u(m1|m0) (and A(f0), u(m0|m1)): head 1 with the
    cross-modal flow off sees view 1 alone, and the best classifier of view 1's mark scores c1 on these objects
    (`best`, from dataset.json), so u(m0|m1) ≥ 1 − c1/A(f1) and d_util ≤ u(m1|m0) − (1 − c1/A(f1)); likewise for
    view 0. 0 when neither bound binds; nan where the dataset records no best accuracy. A network can beat c1 only
    by a chance alignment, on these objects, of what its view shows besides the mark with the class."""
    if not best or None in best or any(math.isnan(x) for x in (acc_m0, acc_m1, u10, u01)) or not acc_m0 * acc_m1:
        return math.nan
    c0, c1 = best
    return max(0.0, (1 - c1 / acc_m1) - u10, (1 - c0 / acc_m0) - u01)


def view_best(run: dict) -> list | None:
    """The best accuracy of each of the run's views' marks on the split its CUR was measured on (None if not
    recorded)."""
    return run["summary"].get("view_best", {}).get((run["cur"] or {}).get("split", "test"))


def run_intervals(cur: dict) -> dict:
    """The per-run intervals of `stats.object_intervals`, recomputed from cur.json's per-object outcomes, so every
    table uses the current method whichever version wrote the file; cur.json's own where it keeps no outcomes."""
    objects = {k: v for k, v in cur.get("objects", {}).items() if k != "index"}
    if not objects.get("fused"):
        return cur.get("intervals", {})
    return stats.object_intervals({k: [int(c) for c in v] for k, v in objects.items()})


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
        intervals = run_intervals(cur)
        acc_m0, acc_m1 = _num(cur.get("acc_m0")), _num(cur.get("acc_m1"))
        u10, u01 = _num(cur.get("u_m1_given_m0")), _num(cur.get("u_m0_given_m1"))
        job = s.get("job", {})
        rows.append({
            "run": r["name"], "cell": cell_label(r), "policy": kind(r), "seed": r["config"]["seed"],
            "epochs": len(r["epochs"]), "acc": _num(cur.get("acc")), "acc_last": _num(last.get("acc")),
            "acc_m0": acc_m0, "acc_m1": acc_m1, "u_m1_given_m0": u10, "u_m0_given_m1": u01,
            "d_util": _num(cur.get("d_util")), "d_util_last": _num(last.get("d_util")),
            "acc_ci": intervals.get("acc"), "d_util_ci": intervals.get("d_util"),
            "d_util_floor": (floor := d_util_floor(acc_m0, acc_m1, u10, u01, view_best(r))),
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
            return stats.fmt_num(v, 4)
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
            return f"[{stats.fmt_num(v[0])}, {stats.fmt_num(v[1])}]"
        return "—" if v is None else str(v)
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def proxy_table(rows: list[dict]) -> list[dict]:
    """Per cell and pair of measures (d_speed final or at half of training; d_util of best.pt or last.pt): Spearman's
    ρ within each policy over its seeds (independent runs: where the paper uses d_speed, within one training
    policy), the mean within-policy ρ with a policy-stratified permutation p, and ρ across all two-view runs, which
    mixes the policies' shifts of both measures (and its runs sharing a seed are not independent). Numbers:
    `rho`, `ci_low`/`ci_high` (None without an interval), `p`, `p_error` (its Monte Carlo error, 0 when exact)."""
    table = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        sel = [r for r in rows if r["cell"] == cell and r["policy"] not in BASELINES]
        policies = list(dict.fromkeys(r["policy"] for r in sel))
        for x, y in PROXY:
            def row(runs: str, s: dict) -> dict:
                ci = s.get("ci") or (None, None)
                return {"cell": cell, "runs": runs, "d_speed": x, "d_util": y, "n": s["n"], "rho": s["rho"],
                        "ci_low": ci[0], "ci_high": ci[1], "p": s["p"], "p_error": s["p_error"]}
            for policy in policies:
                mine = [r for r in sel if r["policy"] == policy]
                table.append(row(f"within {policy}", stats.spearman([r[x] for r in mine], [r[y] for r in mine])))
            if len(policies) > 1:
                table.append(row(STRATIFIED, stats.stratified_spearman([r[x] for r in sel], [r[y] for r in sel],
                                                                       [r["policy"] for r in sel])))
                table.append(row(POOLED, stats.spearman([r[x] for r in sel], [r[y] for r in sel])))
    return table


def proxy_cells(table: list[dict]) -> list[dict]:
    """`proxy_table` rows as printed: ρ [95% Fisher-z interval] and p."""
    out = []
    for r in table:
        ci = "[—]" if stats.missing(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        rho = "—" if stats.missing(r["rho"]) else f"{stats.fmt_num(r['rho'], 2, True)} {ci}"
        out.append(r | {"Spearman ρ [95% CI]": rho, "p": stats.fmt_p(r["p"], r["p_error"])})
    return out


PROXY_NOTE = ("Spearman's rank correlation of d_speed with d_util: within each policy over its seeds (independent "
              "runs; the paper uses d_speed within one training policy), p exact over all orderings up to "
              f"{stats.EXACT_SPEARMAN} runs, Monte Carlo ({stats.PERMUTATIONS} orderings, ± its standard error) "
              "beyond; the mean within-policy ρ, with p from permuting d_util within each policy; and across all "
              "two-view runs, which includes the policies' shifts of both measures (runs sharing a seed are not "
              "independent there, so its interval is only indicative). 95% Fisher-z interval (Bonett-Wright "
              "standard error), none at |ρ| = 1 or below 4 runs.")


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
    pairs = {tuple(r["config"]["views"]) for r in runs}
    first, second = ("the first view of its run", "the second") if len(pairs) > 1 else (
        f"view {v}" for v in pairs.pop())
    text = ("# mmtm report\n\nTest-split CUR from each run's `cur.json` (best.pt) and `cur-last.json` (last.pt); nan "
            f"where `mmtm eval-cur` was not run. Branches: m0 is {first}, m1 {second}; `acc_m0`, `acc_m1` are their "
            "heads' accuracies. d_speed: `d_speed_equal` is the cumulative d_speed after "
            f"{n_equal} regular steps in every run (the fewest any run made), `d_speed_stage` at the end of epoch "
            f"{stage + 1} (half of training), `d_speed_final` after the last step.\n\n"
            + markdown_table(rows, SUMMARY_COLUMNS) + "\n" + sign_sentence(first, second) + "\n"
            + "\nDoes d_speed predict d_util? " + PROXY_NOTE + "\n\n"
            + markdown_table(proxy_cells(proxy_table(rows)), PROXY_COLUMNS) + "\n"
            + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    atomic_write_text(out / "summary.md", text)
    return out / "summary.md"
