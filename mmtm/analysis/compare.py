"""Seeded comparison of training policies on one dataset, over grid axes, with statistics a reviewer can check.

Each (cell, policy, seed) trains into OUT/[cell/]<policy>-s<seed>, where a cell is one combination of the grid axes
(`--set key=v1,v2`: OUT/key=v1/...); seed k of every policy in every cell starts from the same initial weights
and reads the data in the same order, so per-seed differences between policies are paired. `--baselines` adds the
single-view runs of each seed (single-view0-s<k>, single-view1-s<k>): the accuracy each view alone reaches on this
data. The runs are launched by mmtm/analysis/sweep.py (here N at a time, or on Slurm); each ends with its evidence
(mmtm/analysis/evidence.py), and every table and figure is made from that evidence alone, so `--collect DIR` rebuilds a
comparison byte for byte from committed evidence, without checkpoints.

Statistics (mmtm/analysis/stats.py): per policy mean ± sample std and a 95% t-interval over seeds; per pair of policies
the per-seed differences' mean, t-interval, sign-flip permutation p, its Holm adjustment over the whole paired table,
and how many seeds share the sign, with PRIMARY named as the one confirmatory test; McNemar's exact test per seed on
the test objects, counted by direction; per run, Wilson and bootstrap intervals over its test objects; the rank
correlation of d_speed with d_util within each policy, stratified by policy, and across all runs. Both checkpoints
(best.pt, last.pt) are reported side by side. comparison.json holds the numbers (docs/comparison-schema.md);
comparison.md is rendered from it.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmtm.loaders.atomic import atomic_write_text, hold, release
from mmtm.loaders.dataset import SPLITS, DatasetError, data_digest, open_dataset
from mmtm.loaders.errors import UserError
from mmtm.loaders.output import check_output_folder
from mmtm.analysis import evidence, plots, stats
from mmtm.training.config import TrainConfig, as_field_type, resolve, to_dict
from mmtm.training.environment import facts
from mmtm.science.formulas import sign_sentence
from mmtm.training.registry import POLICIES
from mmtm.analysis.report import (BASELINES, PROXY_COLUMNS, PROXY_NOTE, cell_label, kind, markdown_table, proxy_cells,
                         proxy_table, summary_rows, view_best, write_plots)
from mmtm.training.run import RunFolder
from mmtm.analysis.sweep import (RunSpec, changes, check_launcher, is_done, job_log, launch_local, launch_seconds,
                                 launch_slurm, mps_note, thread_share)

DEFAULT_POLICIES = ("vanilla", "balanced", "random", "flipped")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
SWEEP_JSON = "sweep.json"
SWEEP_LOCK = ".sweep.lock"  # held by the sweep running in OUT
REPLACED = ".replaced"      # OUT/.replaced-<time>/: runs of other settings that --retrain-changed moved aside
REFERENCES = ("vanilla", "balanced")  # every other policy is paired against these, where the comparison has them
NOT_AXES = {"data", "out", "policy", "seed", "single_view"}  # set by compare itself
ACCURACY = ("acc", "acc_last", "acc_m0", "acc_m1")
PROBE = ("probe_m0", "probe_m1", "probe_m0_only", "probe_m1_only")  # columns of runs measured with eval-cur --probe
IMBALANCE = ("d_util", "d_util_last", "u_m1_given_m0", "u_m0_given_m1", "d_util_floor", "d_util_above_floor",
             "d_speed_equal", "d_speed_stage", "d_speed_final", "rebalance_m0_steps", "rebalance_m1_steps")
# Paired measures: accuracy as is; the imbalance measures by magnitude (negative = more balanced).
PAIRED = (("acc", "acc", False), ("acc_last", "acc_last", False), ("|d_util|", "d_util", True),
          ("|d_util_last|", "d_util_last", True), ("|d_speed_equal|", "d_speed_equal", True),
          ("|d_speed_stage|", "d_speed_stage", True))
# The comparison the paper's claim stands or falls by, fixed for every comparison: (policy, reference, measure).
PRIMARY = ("balanced", "vanilla", "|d_util|")
MCNEMAR_LEVEL = 0.05
MCNEMAR_COLUMN = "McNemar (acc): A/B better"
SCHEMA_VERSION = 1  # of comparison.json; docs/comparison-schema.md


# ------------------------------------------------------------------------------------------------------ the grid
def _axis_value(name: str, text: str):
    """One value of a grid axis, typed like the config field."""
    kind = {f.name: f.type for f in TrainConfig.__dataclass_fields__.values()}[name]
    base = kind.removesuffix(" | None")
    try:
        value = {"int": int, "float": float, "str": str}[base](text)
    except ValueError:
        raise UserError(f"--set {name}: {text!r} is not {'a whole number' if base == 'int' else 'a number'}") from None
    return as_field_type(name, value, kind)


def _view_pairs(name: str, text: str) -> list[tuple[int, int]]:
    """A grid axis of view pairs, written as `--views` writes one: `0,6,0,3` is the pairs 0,6 and 0,3. The older
    `0-6,0-3` still reads, with a note giving the new spelling."""
    if "-" in text:
        pairs = [p.strip().split("-") for p in text.split(",") if p.strip()]
        if not all(len(p) == 2 and all(v.strip().isdigit() for v in p) for p in pairs):
            raise UserError(f"--set {name} takes view pairs written like --views, 0,6,0,3 for 0,6 and 0,3, "
                            f"got {text!r}")
        print(f"note: --set {name}={text} is written --set {name}={','.join(v.strip() for p in pairs for v in p)} "
              "now (view pairs as --views writes them)", file=sys.stderr)
        return [(int(a), int(b)) for a, b in pairs]
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(parts) % 2 or not all(p.isdigit() for p in parts):
        raise UserError(f"--set {name} takes view pairs written like --views, 0,6,0,3 for 0,6 and 0,3, got {text!r}")
    return [(int(a), int(b)) for a, b in zip(parts[::2], parts[1::2])]


def parse_axes(settings: list[str]) -> dict[str, list]:
    """`KEY=V1,V2,...` (repeatable) → {key: [values]} over config fields; each refused with one error line if the
    key is no config field, is set by compare itself, repeats, or has no or a repeated value."""
    fields = set(TrainConfig.__dataclass_fields__)
    axes: dict[str, list] = {}
    for setting in settings:
        key, eq, values = setting.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not values.strip():
            raise UserError(f"--set takes KEY=V1,V2,..., got {setting!r}")
        if key not in fields:
            raise UserError(f"--set {key}: not a setting; the settings are the keys of a run's config.json")
        if key in NOT_AXES:
            raise UserError(f"--set {key}: compare sets it itself (use --policies, --seeds, --data, --out, "
                            "--baselines)")
        if key in axes:
            raise UserError(f"--set {key} is given twice; list all its values in one --set")
        parsed = (_view_pairs(key, values) if key == "views" else
                  [_axis_value(key, v.strip()) for v in values.split(",") if v.strip()])
        if len(set(parsed)) != len(parsed):
            raise UserError(f"--set {key}: a value repeats in {values!r}")
        axes[key] = parsed
    return axes


def _fmt_axis(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


def cells(axes: dict[str, list]) -> list[dict]:
    """Every combination of the axes' values, in the order given ([{}] without axes)."""
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else [{}]


def plan(data: str, out: Path, *, seeds: list[int], policies: tuple[str, ...], preset: str, config_file: str | None,
         axes: dict[str, list], baselines: bool, overrides: dict, digest: str | None = None,
         probe: bool = False) -> list[RunSpec]:
    """Every run of the sweep, each config resolved (and so checked) before the first one starts."""
    specs = []
    for cell in cells(axes):
        root = out / ",".join(f"{k}={_fmt_axis(v)}" for k, v in cell.items()) if cell else out
        label = {k: _fmt_axis(v) for k, v in cell.items()}
        runs = [(f"{p}-s{s}", dict(policy=p, seed=s)) for s in seeds for p in policies]
        if baselines:
            runs += [(f"single-view{v}-s{s}", dict(policy="vanilla", single_view=v, seed=s)) for s in seeds
                     for v in (0, 1)]
        for name, who in runs:
            after = []
            if who["policy"] == "umt":  # its teachers: this seed's single-view runs, trained first
                if not baselines:
                    raise UserError("policy umt needs --baselines: its teachers are the single-view runs of the same "
                                    "seed and cell")
                after = [root / f"single-view{v}-s{who['seed']}" for v in (0, 1)]
                who = {**who, "umt_teachers": ",".join(map(str, after))}
            cfg = resolve(preset, config_file, data=data, out=str(root / name), **{**overrides, **cell, **who})
            specs.append(RunSpec(root / name, to_dict(cfg), label, preset, digest, probe, after))
    return specs


# ---------------------------------------------------------------------------------------------------- launching
def run_comparison(data: str, out: str | Path, *, seeds: list[int], policies: tuple[str, ...] = DEFAULT_POLICIES,
                   preset: str = "demo", config_file: str | None = None, axes: dict[str, list] | None = None,
                   baselines: bool = False, launcher: str = "local", jobs: int = 1, devices: list[int] | None = None,
                   runs_per_device: int = 1, slurm: dict | None = None, wait: bool = True, progress=None,
                   retrain_changed: bool = False, probe: bool = False, **overrides) -> Path | None:
    """Plan and check every run and the launcher, then (holding OUT's lock) launch, and write the comparison; None
    when Slurm jobs were left running (--no-wait). A run folder in `out` of other settings or data than planned is
    refused, or with `retrain_changed` moved aside and trained again. With `probe`, eval-cur also fits the linear
    probes (mmtm/analysis/probe.py); a kept run without them is evaluated again, not retrained."""
    out = check_output_folder(out)
    data = str(Path(data).resolve())  # runs record an absolute path, so eval-cur works from any folder
    digest = check_data(data)
    specs = plan(data, out, seeds=seeds, policies=policies, preset=preset, config_file=config_file, axes=axes or {},
                 baselines=baselines, overrides={k: v for k, v in overrides.items() if v is not None}, digest=digest,
                 probe=probe)
    check_launcher(launcher, devices)
    with owning(out):
        return _sweep(specs, out, launcher=launcher, jobs=jobs, devices=devices, runs_per_device=runs_per_device,
                      slurm=slurm, wait=wait, progress=progress, retrain_changed=retrain_changed)


def check_data(data: str) -> str:
    """The data folder checked as training checks it (dataset.json, the three split files, a validation split),
    before a sweep creates anything; its digest."""
    dataset = open_dataset(data)
    for split in SPLITS:
        dataset.rows(split)
    if dataset.meta["counts"].get("val", 0) == 0:
        raise DatasetError(f"{data}: no validation objects; re-run `mmtm prep` with --val-fraction > 0")
    return data_digest(data)


@contextlib.contextmanager
def owning(out: Path) -> Iterator[None]:
    """Hold OUT/.sweep.lock while a sweep works in `out` (a second sweep there is refused with one line); a lock
    whose holder died is free. An `out` made here and left empty is removed again."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    holder = hold(out / SWEEP_LOCK)
    if holder is not None:
        raise UserError(f"{out}: {holder} is running a sweep in it (it holds {out / SWEEP_LOCK}); wait for it to "
                        "end, or use another --out")
    try:
        yield
    finally:
        release(out / SWEEP_LOCK)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()


def _changed_runs(specs: list[RunSpec], out: Path, retrain_changed: bool) -> None:
    """Refuse a sweep whose `out` holds runs (finished or not) of other settings or data than it asks for; with
    `retrain_changed`, move them to OUT/.replaced-<time>/ (never deleted) so that they are trained again."""
    changed = [(s, found) for s in specs if (found := changes(s.dir, s.config, s.data_digest))]
    if not changed:
        return
    if not retrain_changed:
        spec, found = changed[0]
        more = f" (and {len(changed) - 1} more runs of other settings)" if len(changed) > 1 else ""
        raise UserError(f"{spec.dir} holds a run of other settings than asked for: {'; '.join(found)}{more}; use "
                        f"another --out, or --retrain-changed to move such runs to {out}/{REPLACED}-<time>/ and "
                        "train them again")
    aside = out / f"{REPLACED}-{time.strftime('%Y%m%d-%H%M%S')}"
    for spec, _ in changed:
        run = RunFolder(spec.dir)
        run.take(wait=False)  # no one trains it now
        run.release()
        dest = aside / spec.dir.relative_to(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(spec.dir, dest)
    print(f"moved {len(changed)} runs of other settings to {aside}", flush=True)


def _failure(specs: list[RunSpec], failed: list[str], launcher: str, out: Path) -> UserError:
    """One line on the runs whose jobs failed: the first one's error and where its log is."""
    names = f"{', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''}"
    if launcher == "slurm":
        return UserError(f"{len(failed)} of {len(specs)} runs failed ({names}); see their logs in {out / '.submitit'}; "
                         "the same command resumes them")
    log = next(job_log(s) for s in specs if s.name == failed[0])
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    said = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
    return UserError(f"{len(failed)} of {len(specs)} runs failed ({names}){f': {said}' if said else ''}; see {log}"
                     f"{' and the other runs’ job.log' if len(failed) > 1 else ''}; the same command resumes them")


def _sweep(specs: list[RunSpec], out: Path, *, launcher: str, jobs: int, devices: list[int] | None,
           runs_per_device: int, slurm: dict | None, wait: bool, progress, retrain_changed: bool) -> Path | None:
    _changed_runs(specs, out, retrain_changed)
    note = mps_note(devices or [], runs_per_device)
    if note:
        print(note, flush=True)
    kept = {s.name for s in specs if is_done(s)}  # from an earlier launch: their time is not this launch's
    resumed = sum(s.name not in kept and RunFolder(s.dir).last.is_file() for s in specs)
    print(f"{len(kept)} of {len(specs)} runs kept from {out}; {len(specs) - len(kept)} to train"
          + (f" ({resumed} resumed from their last.pt)" if resumed else ""), flush=True)
    started = time.perf_counter()
    if launcher == "slurm":
        result = launch_slurm(specs, out, wait=wait, progress=progress, **(slurm or {}))
        if not wait:
            print(f"submitted {len(result['submitted'])} runs ({len(result['active'])} still queued or running); "
                  "run the same command again to collect them", flush=True)
            return None
        failed = result["failed"]
        concurrency = (slurm or {}).get("array_parallelism", 1)
    else:
        failed = launch_local(specs, jobs=jobs, devices=devices, runs_per_device=runs_per_device, progress=progress)
        concurrency = len(devices) * runs_per_device if devices else jobs
    wall = time.perf_counter() - started
    if failed:
        raise _failure(specs, failed, launcher, out)
    for s in specs:
        evidence.place(s.dir, s.cell, s.preset)
    runs = [evidence.load(s.dir) for s in specs]
    run_minutes = sum(launch_seconds(r["summary"]["job"]) for s, r in zip(specs, runs) if s.name not in kept) / 60
    sweep = {"launcher": launcher, "concurrent": concurrency, "runs": len(specs),
             "runs_launched": len(specs) - len(kept),
             "threads_per_job": thread_share(concurrency) if launcher == "local" else (slurm or {}).get("cpus_per_run"),
             "wall_minutes": round(wall / 60, 2), "sum_of_job_minutes": round(run_minutes, 2),
             "speedup": round(run_minutes * 60 / wall, 2) if wall else math.nan,
             "parallel_efficiency": round(run_minutes * 60 / wall / concurrency, 2) if wall else math.nan,
             "machine": facts()}
    atomic_write_text(out / SWEEP_JSON, json.dumps(sweep, indent=2) + "\n")
    return write_comparison(runs, out, sweep)


def collect(source: str | Path, out: str | Path) -> Path:
    """Rebuild a comparison from the evidence under `source` (run folders, or committed evidence), and copy that
    evidence to OUT/runs/ (unless it is there already)."""
    source = Path(source)
    out = check_output_folder(out)
    dirs = evidence.find_runs(source)
    runs = [evidence.load(d) for d in dirs]
    check_one_dataset(runs)
    check_each_run_once(runs)
    sweep_file = source / SWEEP_JSON
    sweep = json.loads(sweep_file.read_text()) if sweep_file.is_file() else None
    target = out / "runs"
    if not target.resolve().is_relative_to(source.resolve()):  # else the evidence is there already
        for d in dirs:
            evidence.copy_evidence(d, target / d.relative_to(source))
        if sweep is not None:
            shutil.copyfile(sweep_file, target / SWEEP_JSON)
    return write_comparison(runs, out, sweep)


def check_one_dataset(runs: list[dict]) -> None:
    """The runs were trained on one dataset: one data digest among the runs that recorded one, and where a run
    recorded none (evidence older than digests), the same data folder and dataset facts in every run."""
    def where(run: dict) -> Path:
        return Path(run["dir"]) / evidence.SUMMARY_JSON

    digests = [r for r in runs if r["summary"].get("data_digest") is not None]
    other = next((r for r in digests if r["summary"]["data_digest"] != digests[0]["summary"]["data_digest"]), None)
    if other is not None:
        raise UserError(f"{where(other)}: a run of data {other['summary']['data_digest'][:19]}…, but "
                        f"{where(digests[0])} is of data {digests[0]['summary']['data_digest'][:19]}…; a comparison "
                        "holds the runs of one dataset")
    if len(digests) < len(runs):
        facts_of = [(r["config"]["data"], r["summary"].get("dataset")) for r in runs]
        i = next((i for i, f in enumerate(facts_of) if f != facts_of[0]), None)
        if i is not None:
            what = "dataset facts (summary.json's dataset)" if facts_of[i][0] == facts_of[0][0] else "data folder"
            raise UserError(f"{where(runs[i])}: a run of data {facts_of[i][0]}, and {where(runs[0])} of "
                            f"{facts_of[0][0]}, differ in their {what}; a comparison holds the runs of one dataset")


def check_each_run_once(runs: list[dict]) -> None:
    """No (cell, policy, seed) twice: two copies of a run (a comparison copied into the folder collected, say)
    would count its seed twice."""
    seen: dict[tuple, dict] = {}
    for run in runs:
        key = (cell_label(run), kind(run), run["config"]["seed"])
        if key in seen:
            raise UserError(f"{run['dir']} and {seen[key]['dir']} are both the run of policy {key[1]}, seed {key[2]}"
                            f"{f', cell {key[0]}' if key[0] else ''}; a comparison counts each run once: collect "
                            "one copy")
        seen[key] = run


# ------------------------------------------------------------------------------------------------------- tables
def _kind_order(kind: str) -> int:
    order = [*POLICIES, *BASELINES]
    return order.index(kind) if kind in order else len(order)


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def canonical(rows: list[dict]) -> list[dict]:
    """Rows in one order whatever order the runs were found in: cell, policy (registry order, baselines last),
    seed."""
    return sorted(rows, key=lambda r: (_natural(r["cell"]), _kind_order(r["policy"]), r["seed"]))


def aggregate(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Per (cell, policy): seeds, and per metric `stats.describe` over seeds (n, mean, sd, t-interval)."""
    table = []
    for cell, policy in dict.fromkeys((r["cell"], r["policy"]) for r in rows):
        sel = [r for r in rows if (r["cell"], r["policy"]) == (cell, policy)]
        table.append({"cell": cell, "policy": policy, "seeds": len(sel),
                      **{m: stats.describe([r[m] for r in sel]) for m in metrics}})
    return table


def _paired_row(objects: dict, mine: list[dict], theirs: list[dict], cell: str, policy: str, reference: str,
                label: str) -> dict:
    """One row of the paired table: runs `mine` against `theirs`, seed by seed (Holm's p added by paired_table)."""
    def by_seed(sel: list[dict], key: str, magnitude: bool) -> dict[int, float]:
        return {r["seed"]: abs(r[key]) if magnitude else r[key] for r in sel}

    a, b = {r["seed"]: r for r in mine}, {r["seed"]: r for r in theirs}
    tests = [stats.mcnemar([int(c) for c in objects[(a[s]["cell"], a[s]["run"])]],
                           [int(c) for c in objects[(b[s]["cell"], b[s]["run"])]]) for s in sorted(set(a) & set(b))]
    significant = [t for t in tests if t["p"] < MCNEMAR_LEVEL]
    return {"cell": cell, "comparison": label, "policy": policy, "reference": reference,
            **{name: stats.paired(by_seed(mine, key, mag), by_seed(theirs, key, mag)) for name, key, mag in PAIRED},
            "mcnemar": {"a_better": sum(t["only_a"] > t["only_b"] for t in significant),
                        "b_better": sum(t["only_b"] > t["only_a"] for t in significant), "n": len(tests)}}


def paired_table(rows: list[dict], objects: dict[str, str]) -> list[dict]:
    """Seed-by-seed differences of each PAIRED measure, and per seed McNemar's test on the test objects (best.pt):
    within each cell, every policy against each reference it is not; across cells, each policy in every cell
    against itself in the first cell. Every p-value of the table is one family for Holm's adjustment (`p_holm`)."""
    table = []
    two_view = [r for r in rows if r["policy"] not in BASELINES]
    cells_in_order = list(dict.fromkeys(r["cell"] for r in two_view))
    for cell in cells_in_order:
        in_cell = [r for r in two_view if r["cell"] == cell]
        present = list(dict.fromkeys(r["policy"] for r in in_cell))
        for ref in (p for p in REFERENCES if p in present):
            for policy in present:
                if policy == ref or (ref == "balanced" and policy == "vanilla"):
                    continue
                table.append(_paired_row(objects, [r for r in in_cell if r["policy"] == policy],
                                         [r for r in in_cell if r["policy"] == ref], cell, policy, ref,
                                         f"{policy} − {ref}"))
    first = cells_in_order[0] if cells_in_order else ""
    for cell in cells_in_order[1:]:
        for policy in dict.fromkeys(r["policy"] for r in two_view if r["cell"] == cell):
            base = [r for r in two_view if r["cell"] == first and r["policy"] == policy]
            if base:
                table.append(_paired_row(objects, [r for r in two_view if r["cell"] == cell
                                                         and r["policy"] == policy], base, cell, policy, policy,
                                         f"{policy}: {cell} − {first}"))
    tests = [(row, label) for row in table for label, _, _ in PAIRED]
    for (row, label), adjusted in zip(tests, stats.holm([row[label]["p"] for row, label in tests])):
        row[label]["p_holm"] = adjusted
    return table


def primary(paired: list[dict]) -> dict | None:
    """The PRIMARY comparison's row and measure in the first cell, if the comparison has it."""
    policy, reference, measure = PRIMARY
    row = next((r for r in paired if (r["policy"], r["reference"]) == (policy, reference)), None)
    return None if row is None else {"cell": row["cell"], "comparison": row["comparison"], "measure": measure,
                                     "checkpoint": "best.pt", **row[measure]}


def baseline_table(rows: list[dict], best: dict[str, list | None], views: dict[str, list[int]]) -> list[dict]:
    """Per cell and view: the single-view runs' test accuracy and epochs to reach 90% of it, beside the best
    classifier of that view's mark on the test objects (`best[cell]`, the cell's views in order; None if not
    recorded). A grid over views has its own pair in each cell (`views[cell]`)."""
    table = []
    for cell, baseline in dict.fromkeys((r["cell"], r["policy"]) for r in rows if r["policy"] in BASELINES):
        sel = [r for r in rows if (r["cell"], r["policy"]) == (cell, baseline)]
        slot = BASELINES.index(baseline)
        table.append({"cell": cell, "view alone": baseline, "view": views[cell][slot], "seeds": len(sel),
                      "best_view_accuracy": best[cell][slot] if best[cell] else None,
                      "acc": stats.describe([r["acc"] for r in sel]),
                      "acc_last": stats.describe([r["acc_last"] for r in sel]),
                      "epochs_to_90": stats.describe([r["epochs_to_90"] for r in sel])})
    return table


def cost_table(rows: list[dict]) -> list[dict]:
    """Training minutes per run by (cell, policy), and against vanilla's (None without vanilla)."""
    table = []
    for cell, policy in dict.fromkeys((r["cell"], r["policy"]) for r in rows):
        mine = [r["minutes"] for r in rows if (r["cell"], r["policy"]) == (cell, policy)]
        base = [r["minutes"] for r in rows if (r["cell"], r["policy"]) == (cell, "vanilla")]
        mean = sum(mine) / len(mine)
        table.append({"cell": cell, "policy": policy, "minutes_per_run": mean,
                      "x_vanilla": mean / (sum(base) / len(base)) if base else None})
    return table


def task_losses(runs: list[dict]) -> dict[str, list[str]]:
    """The two-view policies by the task loss their runs trained with: {loss: [policy, ...]}; a policy with a loss
    of its own (G-Blending's blend, MMPareto's three terms) by that loss's name."""
    by_loss: dict[str, list[str]] = {}
    for run in runs:
        if run["config"].get("single_view") is None:
            policy = POLICIES.get(run["config"]["policy"])
            loss = (policy and policy.own_loss) or run["config"]["loss"]
            policies = by_loss.setdefault(loss, [])
            if run["config"]["policy"] not in policies:
                policies.append(run["config"]["policy"])
    return by_loss


def losses_note(losses: dict[str, list[str]]) -> str:
    return "; ".join(f"`{loss}`: {', '.join(policies)}" for loss, policies in losses.items())


def view_pair_table(rows: list[dict], configs: dict[str, dict]) -> list[dict]:
    """Per (views, policy) of a grid with a `views` axis: mean and t-interval half-width of d_util and final d_speed."""
    table = []
    for cell, policy in dict.fromkeys((r["cell"], r["policy"]) for r in rows if r["policy"] not in BASELINES):
        sel = [r for r in rows if (r["cell"], r["policy"]) == (cell, policy)]
        entry = {"policy": policy, "views": configs[sel[0]["run_id"]]["views"]}
        for key in ("d_util", "d_speed_final"):
            values = [r[key] for r in sel if not math.isnan(r[key])]
            ci = stats.t_interval(values)
            entry[key] = (sum(values) / len(values) if values else math.nan,
                          (ci[1] - ci[0]) / 2 if ci else math.nan)
        table.append(entry)
    return table


def _json_ready(value):
    """nan → None (JSON has no nan), tuples → lists, numpy numbers → Python's: what json.loads gives back."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def write_comparison(runs: list[dict], out: Path, sweep: dict | None) -> Path:
    """comparison.json (numbers, docs/comparison-schema.md), the figures, and comparison.md rendered from that
    JSON, all from the runs' evidence alone."""
    rows, n_equal, stage = summary_rows(runs)
    probed = any("probe_m0" in (run["cur"] or {}) for run in runs)
    for r, run in zip(rows, runs):
        r["run_id"] = f"{r['cell']}/{r['run']}"
        if probed:
            r |= {k: float((run["cur"] or {}).get(k, math.nan)) for k in PROBE}
    accuracy_columns = (*ACCURACY, *PROBE) if probed else ACCURACY
    rows = canonical(rows)
    by_id = {f"{cell_label(run)}/{run['name']}": run for run in runs}
    runs = [by_id[r["run_id"]] for r in rows]
    losses = task_losses(runs)
    objects = {(r["cell"], r["run"]): (by_id[r["run_id"]]["cur"] or {}).get("objects", {}).get("fused", "")
               for r in rows}
    two_view = [r for r in rows if r["policy"] not in BASELINES]
    first = runs[0]
    seeds = sorted({r["seed"] for r in rows})
    cell_names = list(dict.fromkeys(r["cell"] for r in rows))
    figures = write_plots([run for run in runs if run["config"]["seed"] == seeds[0]
                           and cell_label(run) == cell_names[0]], [r for r in rows if r["cell"] == cell_names[0]], out)
    figures.append(plots.plot_cur_by_policy(two_view, out / "cur_by_policy.png"))
    if any("views=" in c for c in cell_names):
        figures.append(plots.plot_view_pairs(view_pair_table(rows, {f"{cell_label(r)}/{r['name']}": r["config"]
                                                                    for r in runs}), out / "view_pairs.png"))
    best = view_best(first)
    paired = paired_table(rows, objects)
    doc = _json_ready({
        "schema_version": SCHEMA_VERSION, "data": first["config"]["data"],
        "dataset": first["summary"].get("dataset", {}),
        "views": first["config"]["views"], "view_limits": first["summary"].get("view_limits"), "view_best": best,
        "preset": first["summary"].get("preset"), "policies": list(dict.fromkeys(r["policy"] for r in rows)),
        "seeds": seeds, "cells": cell_names, "equal_regular_steps": n_equal, "stage_epoch": stage + 1,
        "accuracy": aggregate(rows, accuracy_columns),
        "baselines": baseline_table(rows, {cell_label(r): view_best(r) for r in runs},
                                    {cell_label(r): r["config"]["views"] for r in runs}),
        "imbalance": aggregate(two_view, IMBALANCE), "primary": primary(paired), "paired": paired,
        "proxy": proxy_table(rows), "cost": cost_table(rows), "sweep": sweep,
        "runs": [{k: v for k, v in r.items() if k != "run_id"} for r in rows], "figures": [p.name for p in figures],
        **({"task_losses": losses} if len(losses) > 1 else {})})
    atomic_write_text(out / "comparison.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", render(doc))
    return out / "comparison.md"


def _described_cells(table: list[dict], measures, digits: dict | None = None) -> list[dict]:
    return [r | {m: stats.fmt_described(r[m], (digits or {}).get(m, 3)) for m in measures} for r in table]


def render(doc: dict) -> str:
    """comparison.md from comparison.json's content alone."""
    dataset, views, cell_names = doc["dataset"], doc["views"], doc["cells"]
    synthetic = dataset.get("synthetic")
    what = (f"the built-in synthetic set (`{synthetic.get('views_differ', 'information')}` variant: "
            f"{dataset.get('classes')} classes, chance {1 / dataset['classes']:.2f}, {dataset.get('image_size')} px, "
            f"{dataset.get('counts', {}).get('test')} test objects)" if synthetic else
            f"`{dataset.get('source', 'unknown')}` data ({dataset.get('classes')} classes, "
            f"{dataset.get('counts', {}).get('test')} test objects)")
    limits, best = doc["view_limits"], doc["view_best"]
    probed = any("probe_m0" in r for r in doc["runs"])
    accuracy_columns = (*ACCURACY, *PROBE) if probed else ACCURACY
    cols = ["cell"] if any(cell_names) else []
    paired, proxy = doc["paired"], doc["proxy"]
    n_tests = sum(r[label]["p"] is not None for r in paired for label, _, _ in PAIRED)
    main = doc["primary"]
    baselines = [r | {"best classifier of its mark": stats.fmt_num(r["best_view_accuracy"])}
                 for r in _described_cells(doc["baselines"], ("acc", "acc_last"))
                 ] if doc["baselines"] else []
    for shown, raw in zip(baselines, doc["baselines"]):
        shown["epochs to 90% of acc"] = stats.fmt_described(raw["epochs_to_90"], 1)
    paired_cells = [r | {label: stats.fmt_paired(r[label]) for label, _, _ in PAIRED}
                    | {MCNEMAR_COLUMN: f"{r['mcnemar']['a_better']}/{r['mcnemar']['b_better']} of {r['mcnemar']['n']}"}
                    for r in paired]
    sweep = doc["sweep"]
    first, second = _branch_views(doc)
    signs = sign_sentence(first, second)
    return (
        "# mmtm comparison\n\n"
        f"Data: {what}, `{doc['data']}`, views {views}. Preset `{doc['preset']}`; policies {doc['policies']}; seeds "
        f"{doc['seeds']}; {len(doc['runs'])} runs" + (f"; grid cells {cell_names}" if any(cell_names) else "")
        + ". Test split. "
        + (f"Attainable accuracy of each view alone, by the data's design: view {views[0]}: {limits[0]}, view "
           f"{views[1]}: {limits[1]}. " if limits and None not in limits else "")
        + (f"The best classifier of each view's mark scores, on these test objects, view {views[0]}: "
           f"{stats.fmt_num(best[0])}, view {views[1]}: {stats.fmt_num(best[1])}. "
           if best and None not in best else "")
        + f"Branches: m0 is {first}, m1 {second}. `acc`, `acc_m0`, `acc_m1` (the heads of m0 and m1), u(·|·), "
        "`d_util`: best-validation checkpoint (best.pt); `acc_last`, `d_util_last`: last checkpoint (last.pt). "
        "`d_util_floor`: how close to 0 |d_util| can get given this run's `acc_m1` and u(m1|m0) (and `acc_m0`, "
        "u(m0|m1)), if a head with the cross-modal flow off scores no more than the best classifier of its view's mark "
        "(0: no floor; — where the data records no such accuracy); `d_util_above_floor`: |d_util| − that floor. "
        "d_speed, cumulative: `d_speed_equal` after "
        f"{doc['equal_regular_steps']} regular steps in every run (the fewest any run made), `d_speed_stage` at the "
        f"end of epoch {doc['stage_epoch']} (half of training), `d_speed_final` after the last step. Every number is "
        "also in comparison.json (docs/comparison-schema.md).\n\n"
        "Cells: mean ± sample std [95% t-interval, df = n − 1] over seeds; `[—]` for one seed or no spread.\n\n"
        "## Accuracy\n\n"
        + markdown_table(_described_cells(doc["accuracy"], accuracy_columns), [*cols, "policy", "seeds",
                                                                              *accuracy_columns])
        + (f"\n**Head accuracies from different task losses**: {losses_note(doc['task_losses'])}. Under `fused` the "
           "heads ŷ0, ŷ1 are not trained as classifiers (only their mean is), so `acc_m0`, `acc_m1` do not compare "
           "across these policies; the linear probes of `mmtm eval-cur --probe` (`probe_m0`, `probe_m1`) do.\n"
           if "task_losses" in doc else "")
        + (("\n## Each view alone (single-view baselines)\n\nThe same ResNet-18 branch trained on one view with the "
            "same protocol: the accuracy each view can give on this data, against which `acc_m0` and `acc_m1` above "
            "are judged, beside the best classifier of that view's mark on the test objects (— where the data does not "
            "record it): a network above it sees more than the mark. Epochs to 90%: the first epoch whose "
            "validation accuracy reached 90% of the run's test accuracy.\n\n"
            + markdown_table(baselines, [*cols, "view alone", "seeds", "acc", "best classifier of its mark",
                                         "acc_last", "epochs to 90% of acc"])) if baselines else "")
        + "\n## Imbalance\n\n"
        + markdown_table(_described_cells(doc["imbalance"], IMBALANCE), [*cols, "policy", "seeds", *IMBALANCE])
        + f"\n{signs}\n"
        + (("\n## Paired differences (same seed)\n\n"
            + (f"Primary comparison (the paper's claim; mmtm fixes it for every comparison): {main['comparison']} "
               f"in {main['measure']} (best.pt)" + (f" in cell {main['cell']}" if main["cell"] else "")
               + f": {stats.fmt_paired(main)}. Its raw p is the confirmatory test; every other test here is "
               "exploratory, judged by its Holm p.\n\n" if main else "")
            + "Per seed, policy − reference (within a cell; across cells, a policy against itself in the first cell): "
            "mean [95% t-interval] p (sign-flip permutation test: exact over all 2^n sign patterns up to "
            f"{stats.EXACT_SIGN_FLIPS} seeds, Monte Carlo beyond; — for one seed) (Holm: adjusted over this table's "
            f"{n_tests} tests, every row and measure, as one family) k/n (seeds sharing the sign of the mean). For |·| "
            "a negative difference means more balanced than the reference. McNemar (acc): per seed, McNemar's exact "
            "test on the test objects that exactly one of the two networks (best.pt) gets right; `A/B of n`: the "
            f"seeds in which the policy's (A) or the reference's (B) network is right on significantly more of them "
            f"(p < {MCNEMAR_LEVEL}). It compares two trained networks, so it counts network-to-network variation as "
            "well as any effect of the policy; the policy's effect on accuracy is tested in the `acc` column.\n\n"
            + markdown_table(paired_cells, [*cols, "comparison", *(label for label, _, _ in PAIRED), MCNEMAR_COLUMN]))
           if paired else "")
        + "\n## Does d_speed predict d_util?\n\n" + PROXY_NOTE + "\n\n"
        + markdown_table(proxy_cells(proxy), [*cols, *PROXY_COLUMNS])
        + "\n## Cost\n\n"
        + markdown_table([r | {"minutes per run": f"{r['minutes_per_run']:.2f}", "× vanilla": stats.fmt_num(
            r["x_vanilla"], 2)} for r in doc["cost"]], [*cols, "policy", "minutes per run", "× vanilla"])
        + "\nMinutes per run: each run's own training job (its summary.json), in whichever launch trained it; runs "
          "trained in other launches, under other load or on other machines do not compare.\n"
        + (f"\nSweep: {sweep['runs_launched']} of {sweep['runs']} runs launched by the last command "
           f"({sweep['launcher']} launcher, {sweep['concurrent']} at a time): {sweep['wall_minutes']} min of wall time "
           f"for {sweep['sum_of_job_minutes']} min of their job time (speed-up {sweep['speedup']}, parallel "
           f"efficiency {sweep['parallel_efficiency']}).\n" if sweep else "")
        + "\n## Runs\n\nPer run, in brackets, 95% intervals over its test objects (from cur.json's per-object "
        "outcomes): Wilson score for accuracies, percentile bootstrap for d_util.\n\n"
        + markdown_table(doc["runs"], [*cols, "run", "acc", "acc_ci", "acc_last", "acc_m0", "acc_m1",
                                       *(PROBE if probed else ()), "u_m1_given_m0", "u_m0_given_m1", "d_util",
                                       "d_util_ci", "d_util_last", "d_speed_equal",
                                       "d_speed_stage", "d_speed_final", "regular_steps", "rebalance_steps", "epochs",
                                       "launcher", "host", "device"])
        + f"\n{signs}\n"
        + f"\nPlots of seed {doc['seeds'][0]}'s runs{' in ' + cell_names[0] if cell_names[0] else ''}, u(·|·) of every "
        "run by policy" + (", d_util and d_speed per pair of views" if any("views=" in c for c in cell_names) else "")
        + ":\n\n" + "".join(f"![{name.removesuffix('.png')}]({name})\n" for name in doc["figures"]))


def _branch_views(doc: dict) -> tuple[str, str]:
    """The views of m0 and m1 in words: the pair's numbers, or the cell's where a grid crosses view pairs."""
    if any("views=" in c for c in doc["cells"]):  # each cell has its own pair
        return "the first view of its cell", "the second"
    return f"view {doc['views'][0]}", f"view {doc['views'][1]}"


def terminal_summary(doc: dict) -> str:
    """What `compare` prints at its end, from comparison.json's content: per policy accuracy, d_util, the final
    d_speed and the re-balancing steps; each view alone; the primary comparison; which sign means which view."""
    cols = ["cell"] if any(doc["cells"]) else []
    imbalance = {(r["cell"], r["policy"]): r for r in doc["imbalance"]}
    rows = []
    for r in doc["accuracy"]:
        i = imbalance.get((r["cell"], r["policy"]))
        steps = ("/".join(stats.fmt_num(i[f"rebalance_{m}_steps"]["mean"], 0) for m in ("m0", "m1"))
                 if i else "—")
        rows.append({**{c: r[c] for c in cols}, "policy": r["policy"], "seeds": r["seeds"],
                     "acc": stats.fmt_described(r["acc"]), "d_util": stats.fmt_described(i["d_util"]) if i else "—",
                     "d_speed_final": stats.fmt_described(i["d_speed_final"]) if i else "—",
                     "re-balancing steps m0/m1": steps})
    lines = [markdown_table(rows, [*cols, "policy", "seeds", "acc", "d_util", "d_speed_final",
                                   "re-balancing steps m0/m1"]).rstrip("\n"),
             f"{sign_sentence(*_branch_views(doc))} mean ± sd [95% t-interval] over seeds."]
    main = doc["primary"]
    if main:
        lines.append(f"primary comparison, {main['comparison']} in {main['measure']} (best.pt)"
                     + (f", cell {main['cell']}" if main["cell"] else "") + f": {stats.fmt_paired(main)}")
    return "\n".join(lines)
