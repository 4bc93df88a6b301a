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

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from loaders.atomic import atomic_write_text, remove_stale_temporaries
from loaders.dataset import DatasetError, open_dataset
from loaders.errors import UserError
from mmtm.checkpoint import load_checkpoint
from mmtm.config import TrainConfig, from_dict, to_dict

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
CUR_FIELDS = ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "u_m1_given_m0", "u_m0_given_m1", "d_util")
# Settings that make a checkpoint's state what it is: a run resumed, or a checkpoint evaluated for a run, with
# other values would load weights of another shape or a policy or meter state of another kind, or measure
# another run.
RUN_IDENTITY = ("policy", "loss", "single_view", "width", "mmtm_ratio", "gate", "speed_window", "speed_signal",
                "speed_from_epoch")


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
        self.started = False  # whether `start` wrote this run's files in this process

    @contextlib.contextmanager
    def undone_on_bad_input(self) -> Iterator[None]:
        """Bad input (a UserError) that stops a run this process started before its first checkpoint takes back
        what `start` wrote: without last.pt there is nothing to resume, so the files would only mislead."""
        existed = self.root.exists()
        try:
            yield
        except UserError:
            if self.started and not self.last.exists():
                for path in (self.config, self.steps, self.epochs):
                    path.unlink(missing_ok=True)
                shutil.rmtree(self.tb, ignore_errors=True)
                if not existed:
                    with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                        self.root.rmdir()
            raise

    def saved_config(self) -> TrainConfig | None:
        """The run's config.json, checked; None when the folder has none."""
        if not self.config.is_file():
            return None
        saved = read_json(self.config)
        try:
            return from_dict(saved)
        except UserError as e:
            raise UserError(f"{self.config}: {e}") from None

    def checkpoint(self, which: str) -> Path:
        """`best`, `last`, or a path to a checkpoint file."""
        return getattr(self, which) if which in CHECKPOINTS else Path(which)

    def start(self, cfg: TrainConfig, resume_epoch: int | None) -> None:
        """Write config.json and the CSV headers; on resume keep only the rows of epochs before `resume_epoch`
        (rows written after the last checkpoint, by a run that crashed mid-epoch, belong to an epoch re-run now).
        Temporaries that a killed run left beside its files go first."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.config, self.last, self.best, self.cur):
            remove_stale_temporaries(path)
        atomic_write_text(self.config, json.dumps(to_dict(cfg), indent=2) + "\n")
        self.started = True
        for path, fields in ((self.steps, STEP_FIELDS), (self.epochs, EPOCH_FIELDS)):
            rows = []
            if resume_epoch is not None and path.exists():
                rows = [r for r in read_csv(path, fields) if int(r["epoch"]) < resume_epoch]
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
    """A finished-epoch run as {name, dir, config, steps, epochs, cur, cur_last} (cur* None without eval-cur),
    every file checked first, so that a damaged run is one error line before anything is drawn from it."""
    run = RunFolder(root)
    for path in (run.config, run.steps, run.epochs):
        if not path.is_file():
            raise UserError(f"{run.root}: not a run folder (no {path.name}); make one with `mmtm train`")
    config = to_dict(run.saved_config())
    steps, epochs = read_csv(run.steps, STEP_FIELDS), read_csv(run.epochs, EPOCH_FIELDS)
    if not epochs:
        raise UserError(f"{run.root}: the run has not finished an epoch yet")
    return {"name": run.root.name, "dir": str(run.root), "config": config, "steps": steps, "epochs": epochs,
            "cur": read_cur(run.cur), "cur_last": read_cur(run.cur_last)}


def read_cur(path: Path) -> dict | None:
    """An eval-cur result with its numbers, or None when eval-cur has not written it."""
    cur = read_json(path) if path.is_file() else None
    if cur is not None and not (isinstance(cur, dict) and all(
            isinstance(cur.get(k), (int, float)) and not isinstance(cur.get(k), bool) for k in CUR_FIELDS)):
        raise UserError(f"{path}: must hold the numbers {', '.join(CUR_FIELDS)}; re-run `mmtm eval-cur`")
    return cur


def load_run_checkpoint(path: str | os.PathLike) -> tuple[dict, TrainConfig, list[str]]:
    """A checkpoint written by training (`Trainer.state_dict`) with its config and classes; errors name the file."""
    ckpt = load_checkpoint(path)
    classes = ckpt.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{path}: not a checkpoint of `mmtm train` (it has no list of classes)")
    try:
        return ckpt, from_dict(ckpt["config"]), classes
    except UserError as e:
        raise UserError(f"{path}: its config is not valid ({e})") from None


def check_same_run(checkpoint: str | os.PathLike, saved: TrainConfig, cfg: TrainConfig, advice: str) -> None:
    """The checkpoint's config `saved` agrees with `cfg` on RUN_IDENTITY."""
    for name in RUN_IDENTITY:
        if getattr(saved, name) != getattr(cfg, name):
            raise UserError(f"{checkpoint}: was trained with {name} {getattr(saved, name)!r}, not "
                            f"{getattr(cfg, name)!r}; {advice}")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None


def read_csv(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a run CSV; every field there, and a number in every field but `mode`."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in fields if k not in (reader.fieldnames or ())]
            if missing:
                raise UserError(f"{path}: no column {', '.join(missing)}; the header must be {','.join(fields)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    for i, row in enumerate(rows):
        for k in fields:
            if k != "mode" and not _is_number(row[k]):
                raise UserError(f"{path}: row {i} has {k} {row[k]!r}, not a number")
    return rows


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def check_dataset_matches(data: str, classes: list[str], views) -> None:
    """The dataset a run or checkpoint is used with has the classes it was trained on, and the views exist."""
    ds = open_dataset(data)
    if ds.classes != list(classes):
        raise DatasetError(f"{data}: classes differ from the checkpoint's "
                           f"({len(ds.classes)} vs {len(classes)} classes)")
    for v in views:
        ds.check_view(v)
