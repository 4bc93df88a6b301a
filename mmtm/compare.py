"""Seeded comparison of training policies on one dataset, with statistics a reviewer can check.

Each (policy, seed) trains into OUT/<policy>-s<seed>; seed k of every policy starts from the same initial weights
and reads the data in the same order, so per-seed differences between policies are paired. Every run gets eval-cur
on best.pt and on last.pt. An interrupted comparison picks up where it stopped (finished runs are not trained
again, unfinished ones resume from last.pt, results already evaluated are kept).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from loaders.atomic import atomic_write_text
from mmtm import plots, stats
from loaders.output import check_output_folder
from mmtm.config import resolve
from mmtm.eval_cur import evaluate_cur
from mmtm.report import markdown_table, summary_rows, write_plots
from mmtm.run import RunFolder, load_run
from mmtm.training import fit

DEFAULT_POLICIES = ("vanilla", "balanced", "random", "flipped")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
BASELINE = "vanilla"
ACCURACY = ("acc", "acc_last", "acc_m0", "acc_m1")
IMBALANCE = ("d_util", "d_util_last", "d_speed_equal", "d_speed_final", "d_speed_window_final")
# Paired against vanilla: accuracy as is; the imbalance measures by magnitude (smaller = more balanced).
PAIRED = (("acc", "acc", False), ("acc_last", "acc_last", False), ("|d_util|", "d_util", True),
          ("|d_util_last|", "d_util_last", True), ("|d_speed_equal|", "d_speed_equal", True))


def aggregate(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Per policy (in the order they appear): seeds, and `mean ± std [95% bootstrap interval]` of each metric."""
    table = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        sel = [r for r in rows if r["policy"] == policy]
        table.append({"policy": policy, "seeds": len(sel),
                      **{m: stats.fmt_mean_std_ci([r[m] for r in sel]) for m in metrics}})
    return table


def paired_against(rows: list[dict], baseline: str = BASELINE) -> list[dict]:
    """Per policy other than the baseline: for each PAIRED measure, the per-seed difference policy − baseline as
    `mean [95% interval] k/n` (k of n seeds have the sign of the mean)."""
    def by_seed(policy: str, key: str, magnitude: bool) -> dict[int, float]:
        return {r["seed"]: abs(r[key]) if magnitude else r[key] for r in rows if r["policy"] == policy}

    table = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        if policy == baseline:
            continue
        table.append({"policy": policy, **{label: stats.fmt_paired(stats.paired(
            by_seed(policy, key, magnitude), by_seed(baseline, key, magnitude))) for label, key, magnitude in PAIRED}})
    return table


def _evaluate(run_dir: Path, which: str) -> None:
    """eval-cur on one checkpoint, unless its result is already there and newer than the checkpoint."""
    run = RunFolder(run_dir)
    result, ckpt = run.cur_for(which), run.checkpoint(which)
    if not (result.is_file() and result.stat().st_mtime >= ckpt.stat().st_mtime):
        evaluate_cur(run_dir, checkpoint=which)


def run_comparison(data: str, out: str | Path, *, seeds: list[int], policies: tuple[str, ...] = DEFAULT_POLICIES,
                   preset: str = "demo", config_file: str | None = None, **overrides) -> Path:
    out = check_output_folder(out)
    data = str(Path(data).resolve())  # runs record an absolute path, so eval-cur works from any folder
    # Every run's settings are checked before the first one trains.
    configs = [resolve(preset, config_file, data=data, out=str(out / f"{policy}-s{seed}"), policy=policy, seed=seed,
                       **overrides) for seed in seeds for policy in policies]
    for cfg in configs:
        print(f"== {cfg.policy}, seed {cfg.seed} -> {cfg.out}", flush=True)
        fit(cfg, resume=RunFolder(cfg.out).last.is_file())
        for which in ("best", "last"):
            _evaluate(Path(cfg.out), which)
    runs = [load_run(cfg.out) for cfg in configs]
    rows, n_equal = summary_rows(runs)
    first_seed = [r for r in runs if r["config"]["seed"] == seeds[0]]
    figures = write_plots(first_seed, out) + [plots.plot_cur_by_policy(rows, out / "cur_by_policy.png")]
    accuracy, imbalance = aggregate(rows, ACCURACY), aggregate(rows, IMBALANCE)
    paired = paired_against(rows) if BASELINE in policies and len(policies) > 1 else []
    minutes = sum(float(e["seconds"]) for r in runs for e in r["epochs"]) / 60
    text = (
        "# mmtm comparison\n\n"
        f"Dataset `{data}`, preset `{preset}`, policies {list(policies)}, seeds {seeds}; {len(runs)} runs, "
        f"{minutes:.1f} min of training (epoch time, eval-cur not counted). Test split. `acc`, A(f0) = `acc_m0`, "
        "A(f1) = `acc_m1`, `d_util`: best-validation checkpoint; `acc_last`, `d_util_last`: last checkpoint. "
        f"`d_speed_equal`: cumulative d_speed (d_CLS) after {n_equal} regular steps in every run (the fewest any "
        "run made); `d_speed_final`: after the last step; `d_speed_window_final`: over the last K regular steps.\n\n"
        "Cells: mean ± sample std [95% percentile-bootstrap interval of the mean] over seeds.\n\n"
        "## Accuracy\n\n" + markdown_table(accuracy, ["policy", "seeds", *ACCURACY])
        + "\n## Imbalance\n\n" + markdown_table(imbalance, ["policy", "seeds", *IMBALANCE])
        + ("\n## Paired differences against vanilla (same seed)\n\n"
           "policy − vanilla per seed: mean [95% bootstrap interval] and how many seeds share the sign of the mean. "
           "For |d_util| and |d_speed_equal| a negative difference means more balanced than vanilla.\n\n"
           + markdown_table(paired, ["policy", *(label for label, _, _ in PAIRED)]) if paired else "")
        + "\n## Runs\n\n"
        + markdown_table(rows, ["run", "acc", "acc_last", "acc_m0", "acc_m1", "u_m1_given_m0", "u_m0_given_m1",
                                "d_util", "d_util_last", "d_speed_equal", "d_speed_final", "regular_steps",
                                "rebalance_steps", "epochs"])
        + f"\nPlots of seed {seeds[0]}'s runs, and u(·|·) of every run by policy:\n\n"
        + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    atomic_write_text(out / "comparison.md", text)
    atomic_write_text(out / "comparison.json", json.dumps(
        {"data": data, "preset": preset, "policies": list(policies), "seeds": list(seeds), "equal_regular_steps":
         n_equal, "training_minutes": round(minutes, 2), "runs": rows, "accuracy": accuracy, "imbalance": imbalance,
         "paired_against_vanilla": paired}, indent=2) + "\n")
    if any(math.isnan(r["d_util"]) for r in rows):
        print("note: some d_util are nan (a head with zero accuracy)", flush=True)
    return out / "comparison.md"
