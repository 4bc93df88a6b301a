"""A run's evidence: the few small files from which every table and plot of a comparison is made, so that a
comparison can be committed and re-derived without its checkpoints (`mmtm compare --collect DIR`).

Per run: config.json, epochs.csv, cur.json, cur-last.json (as training and eval-cur wrote them: the test split of
best.pt and last.pt, which `load` checks) and summary.json, a digest of steps.csv written here:

    steps, regular_steps, rebalance_m0_steps, rebalance_m1_steps
    d_speed_by_regular_step   the cumulative d_speed after the 1st, 2nd, ... regular step (what "after an equal
                              number of regular steps" reads)
    trace                     every TRACE_EVERY steps (and the last): step, epoch, the cumulative d_speed and its
                              windowed and per-step views, s(m1|m0), s(m0|m1), the policy's signal, the mean loss of
                              the interval, and how many re-balancing steps of each kind it held
    first_rebalance           the first re-balancing step and its mode (null without one)
    data_digest               the digest of the run's dataset.json and split files that `mmtm train` recorded in
                              RUN/data.json (null for a run that recorded none), so that runs of two datasets are
                              not mixed
    view_limits               the attainable accuracy of the run's two views alone, from dataset.json (null when the
                              dataset does not record them)
    view_best                 per split, the accuracy of the best classifier of each of the run's two views' marks
                              on that split's objects, from dataset.json (absent when the dataset does not record it)
    job                       where and how the run was made: launcher, host, device, threads, seconds
    cell, preset              the sweep's grid cell (axis values) and preset, for tables grouped by axis

Numbers are rounded to 6 significant digits, which keeps a run's evidence at a few tens of KB.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from mmtm.loaders.atomic import atomic_write_text
from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.errors import UserError
from mmtm.science.fusion import REGULAR
from mmtm.training.run import (CONFIG_JSON, CUR_JSON, CUR_LAST_JSON, EPOCH_FIELDS, EPOCHS_CSV, STEP_FIELDS, STEPS_CSV,
                      RunFolder, read_csv, read_cur, read_json)
from mmtm.training.config import from_dict, to_dict

SUMMARY_JSON = "summary.json"
EVIDENCE = (CONFIG_JSON, EPOCHS_CSV, CUR_JSON, CUR_LAST_JSON, SUMMARY_JSON)
TRACE_EVERY = 10
BEST = "best_view_accuracy"  # dataset.json: per split, the best classifier of each view's marks (synthetic sets)
TRACE_FIELDS = ("d_speed", "d_speed_window", "d_speed_step", "s_m1_m0", "s_m0_m1", "d_speed_signal")


def _round(x: float) -> float | None:
    return None if math.isnan(x) else float(f"{x:.6g}")


def summarise(run_dir: str | os.PathLike, *, job: dict | None = None, cell: dict | None = None,
              preset: str | None = None) -> dict:
    """Write RUN/summary.json (`digest`); returns it."""
    summary = digest(run_dir, job=job, cell=cell, preset=preset)
    atomic_write_text(Path(run_dir) / SUMMARY_JSON, json.dumps(summary, separators=(",", ":")) + "\n")
    return summary


def digest(run_dir: str | os.PathLike, *, job: dict | None = None, cell: dict | None = None,
           preset: str | None = None) -> dict:
    """The summary of a run from its steps.csv, and from dataset.json what the set is and its views' limits."""
    run = RunFolder(run_dir)
    steps = read_csv(run.steps, STEP_FIELDS)
    config = run.saved_config()
    regular = [s for s in steps if s["mode"] == REGULAR]
    trace: dict[str, list] = {k: [] for k in ("step", "epoch", "loss", "rebalance_m0", "rebalance_m1", *TRACE_FIELDS)}
    for start in range(0, len(steps), TRACE_EVERY):
        chunk = steps[start:start + TRACE_EVERY]
        last = chunk[-1]
        trace["step"].append(int(last["step"]))
        trace["epoch"].append(int(last["epoch"]))
        trace["loss"].append(_round(sum(float(s["loss"]) for s in chunk) / len(chunk)))
        for mode in ("rebalance_m0", "rebalance_m1"):
            trace[mode].append(sum(s["mode"] == mode for s in chunk))
        for k in TRACE_FIELDS:
            trace[k].append(_round(float(last[k])))
    first = next((s for s in steps if s["mode"] != REGULAR), None)
    meta = open_dataset(config.data).meta if (Path(config.data) / "dataset.json").is_file() else {}
    limits = meta.get("view_accuracy_limits")
    return {
        "name": run.root.name, "preset": preset, "cell": cell or {},
        "steps": len(steps), "regular_steps": len(regular),
        "rebalance_m0_steps": sum(s["mode"] == "rebalance_m0" for s in steps),
        "rebalance_m1_steps": sum(s["mode"] == "rebalance_m1" for s in steps),
        "first_rebalance": {"step": int(first["step"]), "mode": first["mode"]} if first else None,
        "view_limits": [limits.get(str(v)) for v in config.views] if limits else None,
        **({"view_best": {split: [best.get(str(v)) for v in config.views] for split, best in meta[BEST].items()}}
           if BEST in meta else {}),
        "dataset": {k: meta[k] for k in ("source", "synthetic", "image_size", "counts") if k in meta}
        | ({"classes": len(meta["classes"])} if "classes" in meta else {}),
        "data_digest": run.data_digest(),
        "d_speed_by_regular_step": [_round(float(s["d_speed"])) for s in regular],
        "trace_every": TRACE_EVERY, "trace": trace, "job": job or {},
    }


def place(run_dir: str | os.PathLike, cell: dict, preset: str | None) -> None:
    """Record the grid cell and preset a sweep files the run under, if its summary says otherwise (a run copied in
    from another comparison keeps its results and takes the cell of this one)."""
    path = Path(run_dir) / SUMMARY_JSON
    summary = read_json(path)
    if summary.get("cell") != cell or summary.get("preset") != preset:
        summary |= {"cell": cell, "preset": preset}
        atomic_write_text(path, json.dumps(summary, separators=(",", ":")) + "\n")


def is_summarised(run_dir: str | os.PathLike) -> bool:
    """The run's evidence is complete and newer than its last checkpoint (a resumed run must be summarised anew)."""
    run = RunFolder(run_dir)
    summary = run.root / SUMMARY_JSON
    return (summary.is_file() and run.cur.is_file() and run.cur_last.is_file() and run.last.is_file()
            and summary.stat().st_mtime >= max(run.last.stat().st_mtime, run.cur.stat().st_mtime,
                                               run.cur_last.stat().st_mtime))


def load(run_dir: str | os.PathLike, *, complete: bool = True) -> dict:
    """A run's evidence as {name, dir, config, epochs, cur, cur_last, summary}, every file checked first. With
    `complete` False (`mmtm report` on any run folder) cur/cur_last may be None (no eval-cur yet) and a run without
    summary.json is digested from its steps.csv, in memory."""
    root = Path(run_dir)
    for name in EVIDENCE if complete else (CONFIG_JSON, EPOCHS_CSV):
        if not (root / name).is_file():
            raise UserError(f"{root}: no {name}; a run's evidence is {', '.join(EVIDENCE)} "
                            "(`mmtm train`, `mmtm eval-cur` and `mmtm compare` write them)")
    try:
        config = to_dict(from_dict(read_json(root / CONFIG_JSON)))
    except UserError as e:
        raise UserError(f"{root / CONFIG_JSON}: {e}") from None
    epochs = read_csv(root / EPOCHS_CSV, EPOCH_FIELDS)
    if not epochs:
        raise UserError(f"{root}: the run has not finished an epoch yet")
    if (root / SUMMARY_JSON).is_file():
        summary = read_json(root / SUMMARY_JSON)
    elif (root / STEPS_CSV).is_file():
        summary = digest(root)
    else:
        raise UserError(f"{root}: no {SUMMARY_JSON} and no {STEPS_CSV}; not a run folder")
    if not isinstance(summary, dict) or not isinstance(summary.get("d_speed_by_regular_step"), list):
        raise UserError(f"{root / SUMMARY_JSON}: not a run summary; re-run `mmtm compare` to write it")
    _check_types(root / SUMMARY_JSON, summary, SUMMARY_TYPES)
    _check_types(root / SUMMARY_JSON, summary["trace"], {"d_speed": list}, "trace.")
    cur, cur_last = read_cur(root / CUR_JSON), read_cur(root / CUR_LAST_JSON)
    for path, result in ((root / CUR_JSON, cur), (root / CUR_LAST_JSON, cur_last)):
        if result is not None:
            _check_types(path, result, CUR_TYPES, required=False)
    return {"name": root.name, "dir": str(root), "config": config, "epochs": epochs, "cur": cur, "cur_last": cur_last,
            "summary": summary}


# What the tables read from a summary and a cur.json besides the numbers read_cur checks: key → allowed types.
SUMMARY_TYPES = {"steps": (int,), "regular_steps": (int,), "rebalance_m0_steps": (int,),
                 "rebalance_m1_steps": (int,), "trace": (dict,), "cell": (dict,), "dataset": (dict,), "job": (dict,),
                 "view_limits": (list, type(None)), "data_digest": (str, type(None))}
CUR_TYPES = {"intervals": (dict,), "objects": (dict,)}
_TYPE_NAMES = {int: "a whole number", dict: "an object", list: "a list", str: "a string", type(None): "null"}


def _check_types(path: Path, record: dict, types: dict, prefix: str = "", *, required: bool = True) -> None:
    """Each key of `types` in `record` (absent only without `required`, or where null is allowed: summaries
    written before a key existed lack it) holds one of its types; one line naming the file and key otherwise."""
    for key, allowed in types.items():
        if key not in record and (not required or type(None) in allowed):
            continue
        value = record.get(key)
        if key not in record or isinstance(value, bool) or not isinstance(value, allowed):
            wanted = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise UserError(f"{path}: {prefix}{key} must be {wanted}, "
                            f"{'is missing' if key not in record else f'not {value!r:.60}'}; re-run `mmtm compare`")


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run folder with a summary.json under `root` (at any depth, not in a hidden folder), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder of runs")
    # hidden folders hold no run: .replaced-*/ keeps runs a sweep moved aside (mmtm/analysis/compare.py)
    found = sorted(p.parent for p in root.rglob(SUMMARY_JSON)
                   if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))
    if not found:
        raise UserError(f"{root}: holds no run with a {SUMMARY_JSON}; point --collect at a comparison's folder")
    return found


def copy_evidence(run_dir: Path, dest: Path) -> None:
    """The run's evidence files into `dest` (created), nothing else (no checkpoints, no steps.csv)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in EVIDENCE:
        shutil.copyfile(run_dir / name, dest / name)
