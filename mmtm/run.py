"""The run-folder contract, as `loaders/dataset.py` is for datasets: training writes a run folder, eval-cur,
report and compare read it.

Layout of a run folder::

    config.json   the resolved TrainConfig (`mmtm train --config RUN/config.json` repeats the run)
    steps.csv     one row per step (STEP_FIELDS)
    epochs.csv    one row per epoch (EPOCH_FIELDS)
    last.pt       the checkpoint after the last finished epoch (what --resume continues)
    best.pt       the checkpoint of the best validation accuracy of ŷ
    cur.json      written by `mmtm eval-cur` for best.pt (or a checkpoint named by path); cur-last.json for last.pt
    tb/           TensorBoard scalars, when the tensorboard package is installed (mmtm/tensorboard_log.py)
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from loaders.atomic import atomic_write_text
from loaders.dataset import DatasetError, check_view, open_dataset
from loaders.errors import UserError
from mmtm.config import TrainConfig, to_dict

CONFIG_JSON, STEPS_CSV, EPOCHS_CSV = "config.json", "steps.csv", "epochs.csv"
LAST_PT, BEST_PT, CUR_JSON, CUR_LAST_JSON = "last.pt", "best.pt", "cur.json", "cur-last.json"
TB = "tb"
CHECKPOINTS = ("best", "last")

# d_speed, s_m1_m0, s_m0_m1: the cumulative view (the paper's); d_speed_step, d_speed_window: the other two views
# (nan on re-balancing steps for the per-step one); d_speed_signal: what the step policy read (mmtm/speed.py).
STEP_FIELDS = ("step", "epoch", "mode", "loss", "s_m1_m0", "s_m0_m1", "d_speed", "d_speed_step", "d_speed_window",
               "d_speed_signal")
EPOCH_FIELDS = ("epoch", "lr", "train_loss", "train_loss_regular", "train_acc", "val_acc", "val_acc_m0",
                "val_acc_m1", "val_loss", "d_speed", "s_m1_m0", "s_m0_m1", "d_speed_window", "regular_steps",
                "rebalance_m0_steps", "rebalance_m1_steps", "seconds")


class RunFolder:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / CONFIG_JSON
        self.steps = self.root / STEPS_CSV
        self.epochs = self.root / EPOCHS_CSV
        self.last = self.root / LAST_PT
        self.best = self.root / BEST_PT
        self.cur = self.root / CUR_JSON
        self.cur_last = self.root / CUR_LAST_JSON
        self.tb = self.root / TB

    def checkpoint(self, which: str) -> Path:
        """`best`, `last`, or a path to a checkpoint file."""
        return getattr(self, which) if which in CHECKPOINTS else Path(which)

    def start(self, cfg: TrainConfig, resume_epoch: int | None) -> None:
        """Write config.json and the CSV headers; on resume keep only the rows of epochs before `resume_epoch`
        (rows written after the last checkpoint, by a run that crashed mid-epoch, belong to an epoch re-run now)."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, json.dumps(to_dict(cfg), indent=2) + "\n")
        for path, fields in ((self.steps, STEP_FIELDS), (self.epochs, EPOCH_FIELDS)):
            rows = []
            if resume_epoch is not None and path.exists():
                with path.open(newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < resume_epoch]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

    def append_steps(self, rows: list[dict]) -> None:
        _append(self.steps, STEP_FIELDS, rows)

    def append_epoch(self, row: dict) -> None:
        _append(self.epochs, EPOCH_FIELDS, [row])

    def cur_for(self, which: str) -> Path:
        """Where eval-cur writes the result for checkpoint `which` (best, last or a path)."""
        return self.cur_last if which == "last" else self.cur

    def write_cur(self, which: str, result: dict) -> None:
        atomic_write_text(self.cur_for(which), json.dumps(result, indent=2) + "\n")


def _append(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def load_run(root: str | os.PathLike) -> dict:
    """A finished-epoch run as {name, dir, config, steps, epochs, cur, cur_last} (cur* None without eval-cur)."""
    run = RunFolder(root)
    for path in (run.config, run.steps, run.epochs):
        if not path.is_file():
            raise UserError(f"{run.root}: not a run folder (no {path.name}); make one with `mmtm train`")
    with run.steps.open(newline="") as f:
        steps = list(csv.DictReader(f))
    with run.epochs.open(newline="") as f:
        epochs = list(csv.DictReader(f))
    if not epochs:
        raise UserError(f"{run.root}: the run has not finished an epoch yet")
    return {"name": run.root.name, "dir": str(run.root), "config": json.loads(run.config.read_text()),
            "steps": steps, "epochs": epochs, "cur": _json_or_none(run.cur), "cur_last": _json_or_none(run.cur_last)}


def _json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def check_dataset_matches(data: str, classes: list[str], views) -> None:
    """The dataset a run or checkpoint is used with has the classes it was trained on, and the views exist."""
    ds = open_dataset(data)
    if ds.classes != list(classes):
        raise DatasetError(f"{data}: classes differ from the checkpoint's ({len(ds.classes)} vs {len(classes)} classes)")
    for v in views:
        check_view(v)
