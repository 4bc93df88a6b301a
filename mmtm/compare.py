"""Seeded comparison of vanilla, balanced and random training on one dataset (the paper's finding).

Each (policy, seed) trains into OUT/<policy>-s<seed>; an interrupted comparison picks up where it stopped
(finished runs are not trained again, unfinished ones resume from last.pt)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from loaders.atomic import atomic_write_text
from loaders.output import check_output_folder
from mmtm.config import resolve
from mmtm.eval_cur import evaluate_cur
from mmtm.policy import POLICIES
from mmtm.report import markdown_table, summary_rows, write_plots
from mmtm.run import RunFolder, load_run
from mmtm.training import fit

METRICS = ("acc", "acc_m0", "acc_m1", "abs_d_util", "abs_final_d_speed")


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± sample std over seeds, per policy."""
    table = []
    for policy in POLICIES:
        sel = [r for r in rows if r["policy"] == policy]
        if not sel:
            continue
        values = {"acc": [r["acc"] for r in sel], "acc_m0": [r["acc_m0"] for r in sel],
                  "acc_m1": [r["acc_m1"] for r in sel], "abs_d_util": [abs(r["d_util"]) for r in sel],
                  "abs_final_d_speed": [abs(r["final_d_speed"]) for r in sel]}
        table.append({"policy": policy, "seeds": len(sel), **{k: _mean_std(v) for k, v in values.items()}})
    return table


def run_comparison(data: str, out: str | Path, *, seeds: list[int], policies: tuple[str, ...] = tuple(POLICIES),
                   preset: str = "demo", config_file: str | None = None, **overrides) -> Path:
    out = check_output_folder(out)
    data = str(Path(data).resolve())  # runs record an absolute path, so eval-cur works from any folder
    # Every run's settings are checked before the first one trains.
    configs = [resolve(preset, config_file, data=data, out=str(out / f"{policy}-s{seed}"), policy=policy, seed=seed,
                       **overrides) for seed in seeds for policy in policies]
    for cfg in configs:
        print(f"== {cfg.policy}, seed {cfg.seed} -> {cfg.out}", flush=True)
        fit(cfg, resume=RunFolder(cfg.out).last.is_file())
        evaluate_cur(cfg.out, checkpoint="best")
    runs = [load_run(cfg.out) for cfg in configs]
    per_run = summary_rows(runs)
    for r in per_run:
        r["abs_d_util"], r["abs_final_d_speed"] = abs(r["d_util"]), abs(r["final_d_speed"])
    plots = write_plots(runs, out)
    table = aggregate(per_run)
    text = (
        "# mmtm comparison\n\n"
        f"Dataset `{data}`, preset `{preset}`, seeds {seeds}. Test split, best-validation checkpoint. "
        "|d_util| from `mmtm eval-cur`; |d_speed| is the cumulative d_speed (d_CLS) after the last step. "
        "Mean ± sample standard deviation over seeds.\n\n"
        + markdown_table(table, ["policy", "seeds", *METRICS])
        + "\n## Runs\n\n"
        + markdown_table(per_run, ["run", "acc", "acc_m0", "acc_m1", "u_m1_given_m0", "u_m0_given_m1", "d_util",
                                   "final_d_speed", "rebalance_steps", "epochs"])
        + "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
    atomic_write_text(out / "comparison.md", text)
    if any(math.isnan(r["d_util"]) for r in per_run):
        print("note: some d_util are nan (a head with zero accuracy)", flush=True)
    return out / "comparison.md"
