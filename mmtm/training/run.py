"""The run-folder contract, as `loaders/dataset.py` is for datasets: training writes a run folder, eval-cur,
report and compare read it.

Layout of a run folder::

    config.json   the resolved TrainConfig (`mmtm train --config RUN/config.json` repeats the run)
    data.json     the data the run was started on: its folder and `mmtm.loaders.dataset.data_digest` (not a setting)
    steps.csv     one row per step (STEP_FIELDS)
    epochs.csv    one row per epoch (EPOCH_FIELDS)
    last.pt       the checkpoint after the last finished epoch (what --resume continues)
    best.pt       the checkpoint of the best validation accuracy of ŷ
    cur.json      written by `mmtm eval-cur` for best.pt on the test split; cur-last.json for last.pt on the test split
    cur-SPLIT-CHECKPOINT.json   eval-cur on any other split or checkpoint (`cur-val-last.json`, and for a checkpoint
                  named by path its file name: `cur-test-epoch5.pt.json`): report and compare read only the two above
    tb/           TensorBoard scalars, when the tensorboard package is installed (mmtm/training/tensorboard_log.py)
    .run.lock     held by the process training the run (`mmtm train`, a sweep's job), so that no second one writes it
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mmtm.loaders.atomic import atomic_write_text, hold, remove_stale_temporaries
from mmtm.loaders.atomic import release as release_lock
from mmtm.loaders.dataset import DatasetError, data_digest, open_dataset
from mmtm.loaders.errors import UserError, write_error
from mmtm.training.checkpoint import load_checkpoint
from mmtm.training.config import TrainConfig, from_dict, to_dict

CONFIG_JSON, DATA_JSON, STEPS_CSV, EPOCHS_CSV = "config.json", "data.json", "steps.csv", "epochs.csv"
LAST_PT, BEST_PT, CUR_JSON, CUR_LAST_JSON = "last.pt", "best.pt", "cur.json", "cur-last.json"
TB = "tb"
RUN_LOCK = ".run.lock"
CHECKPOINTS = ("best", "last")

# d_speed, s_m1_m0, s_m0_m1: the cumulative view (the paper's); d_speed_step, d_speed_window: the other two views
# (nan on re-balancing steps for the per-step one); d_speed_signal: what the step policy read (mmtm/science/speed.py).
STEP_FIELDS = ("step", "epoch", "mode", "loss", "s_m1_m0", "s_m0_m1", "d_speed", "d_speed_step", "d_speed_window",
               "d_speed_signal")
# *_graph_steps: the epoch's steps of each mode that ran as replays of a captured CUDA graph
# (mmtm/training/cuda_graphs.py); runs written before these columns existed read them as nan (not recorded).
GRAPH_STEP_FIELDS = ("regular_graph_steps", "rebalance_m0_graph_steps", "rebalance_m1_graph_steps")
EPOCH_FIELDS = ("epoch", "lr", "train_loss", "train_loss_regular", "train_acc", "val_acc", "val_acc_m0",
                "val_acc_m1", "val_loss", "d_speed", "s_m1_m0", "s_m0_m1", "d_speed_window", "regular_steps",
                "rebalance_m0_steps", "rebalance_m1_steps", *GRAPH_STEP_FIELDS, "seconds")
CUR_FIELDS = ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "u_m1_given_m0", "u_m0_given_m1", "d_util")
# Settings that make a checkpoint's state what it is: a checkpoint evaluated for a run with other values would load
# weights of another shape or measure another run.
RUN_IDENTITY = ("policy", "loss", "single_view", "width", "mmtm_ratio", "gate", "speed_window", "speed_signal",
                "speed_from_epoch")
# Where and how a run executes, not what it trains: a resumed run may change these (a moved run or dataset, another
# machine, device or thread share); every other setting, --epochs included (the cosine schedule and G-Blending's
# plan are laid over the run's epochs), must be what the checkpoint was trained with, so that config.json, which a
# resume rewrites, still describes the run that happened.
MAY_CHANGE_ON_RESUME = ("data", "out", "device", "loader", "num_threads", "cpu_threads", "amp", "channels_last",
                        "cuda_graphs")


class RunFolder:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / CONFIG_JSON
        self.data = self.root / DATA_JSON
        self.steps = self.root / STEPS_CSV
        self.epochs = self.root / EPOCHS_CSV
        self.last = self.root / LAST_PT
        self.best = self.root / BEST_PT
        self.cur = self.root / CUR_JSON
        self.cur_last = self.root / CUR_LAST_JSON
        self.tb = self.root / TB
        self.lock = self.root / RUN_LOCK
        self.started = False  # whether `start` wrote this run's files in this process
        self.held = False  # whether `start` took the run's lock

    @contextlib.contextmanager
    def undone_on_bad_input(self) -> Iterator[None]:
        """Bad input (a UserError) that stops a run this process started before its first checkpoint takes back
        what `start` wrote: without last.pt there is nothing to resume, so the files would only mislead. The run's
        lock, taken by `start`, is given back at the end."""
        existed = os.path.exists(self.root)  # False for a path the system cannot hold, which training refuses
        try:
            yield
        except UserError:
            if self.started and not self.last.exists():
                for path in (self.config, self.data, self.steps, self.epochs):
                    path.unlink(missing_ok=True)
                shutil.rmtree(self.tb, ignore_errors=True)
                if not existed:
                    self.release()
                    with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                        self.root.rmdir()
            raise
        finally:
            self.release()

    def take(self, *, wait: bool) -> None:
        """Hold the run's lock (RUN/.run.lock) in this process; another holder is waited for with `wait`, else
        refused with one line naming it. Taken again through this folder object it stays held once."""
        if self.held:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        holder = hold(self.lock, wait=wait)
        if holder is not None:
            raise UserError(f"{self.root}: {holder} is training this run (it holds {self.lock}); wait for it to "
                            "end, or use another --out")
        self.held = True

    def release(self) -> None:
        """Give back the lock `take` took."""
        if self.held:
            self.held = False
            release_lock(self.lock)

    def saved_config(self) -> TrainConfig | None:
        """The run's config.json, checked; None when the folder has none."""
        if not self.config.is_file():
            return None
        saved = read_json(self.config)
        try:
            return from_dict(saved)
        except UserError as e:
            raise UserError(f"{self.config}: {e}") from None

    def data_digest(self) -> str | None:
        """The digest of the data the run was started on (data.json); None when the run did not record one."""
        if not self.data.is_file():
            return None
        record = read_json(self.data)
        digest = record.get("digest") if isinstance(record, dict) else None
        if not isinstance(digest, str):
            raise UserError(f"{self.data}: must hold the data's digest as a string under 'digest'")
        return digest

    def checkpoint(self, which: str) -> Path:
        """`best`, `last`, or a path to a checkpoint file."""
        return getattr(self, which) if which in CHECKPOINTS else Path(which)

    def start(self, cfg: TrainConfig, resume_epoch: int | None) -> None:
        """Write config.json and the CSV headers; on resume keep only the rows of epochs before `resume_epoch`
        (rows written after the last checkpoint, by a run that crashed mid-epoch, belong to an epoch re-run now).
        The run's lock is taken first (a second process on the folder is refused). A new run records its data's
        digest in data.json; a resumed one must find the data it recorded there (a run without a record keeps none:
        what it began on is not known). Temporaries that a killed run left beside its files go first."""
        self.take(wait=False)
        digest = data_digest(cfg.data)
        recorded = self.data_digest() if resume_epoch is not None else None
        if recorded is not None and recorded != digest:
            raise UserError(f"{self.data}: the run was started on data with digest {recorded}, but {cfg.data} now "
                            f"has {digest} (its dataset.json or split files changed); resume it on the data it "
                            "began on, or start a new run in another --out")
        for path in (self.config, self.data, self.steps, self.epochs, self.last, self.best, self.cur):
            remove_stale_temporaries(path)
        if resume_epoch is None:
            atomic_write_text(self.data, json.dumps({"data": cfg.data, "digest": digest}, indent=2) + "\n")
        atomic_write_text(self.config, json.dumps(to_dict(cfg), indent=2) + "\n")
        self.started = True
        for path, fields in ((self.steps, STEP_FIELDS), (self.epochs, EPOCH_FIELDS)):
            rows = []
            if resume_epoch is not None and path.exists():
                rows = [r for r in read_csv(path, fields) if int(r["epoch"]) < resume_epoch]
            text = io.StringIO(newline="")
            w = csv.DictWriter(text, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(path, text.getvalue())  # a full disk here leaves the rows as they were

    def append_steps(self, rows: list[dict]) -> None:
        _append(self.steps, STEP_FIELDS, rows)

    def append_epoch(self, row: dict) -> None:
        _append(self.epochs, EPOCH_FIELDS, [row])

    def cur_for(self, which: str, split: str = "test") -> Path:
        """Where eval-cur writes the result for checkpoint `which` (best, last or a path) on `split`: cur.json and
        cur-last.json only for best.pt and last.pt on the test split (what report and compare read); any other
        pair carries both in its name, so that no file passes another split or checkpoint off as those."""
        if which not in CHECKPOINTS and Path(which).resolve() in (self.best.resolve(), self.last.resolve()):
            which = Path(which).stem  # the run's own best.pt or last.pt, named by path
        if split == "test" and which in CHECKPOINTS:
            return self.cur if which == "best" else self.cur_last
        return self.root / f"cur-{split}-{which if which in CHECKPOINTS else Path(which).name}.json"

    def write_cur(self, which: str, result: dict) -> None:
        atomic_write_text(self.cur_for(which, result["split"]), json.dumps(result, indent=2) + "\n")


def _append(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """Rows appended whole or not at all: a write that fails (a full disk) is cut back to the rows before it."""
    size = path.stat().st_size
    try:
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        os.truncate(path, size)
        error = write_error(e, path)
        if error is e:
            raise
        raise error from None


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
    """A run's cur.json or cur-last.json with its numbers, or None when eval-cur has not written it. It must be what
    its name says: the test split of best.pt (cur.json) or last.pt (cur-last.json); an older eval-cur wrote other
    splits and checkpoints under these names too."""
    cur = read_json(path) if path.is_file() else None
    if cur is None:
        return None
    if not (isinstance(cur, dict) and all(
            isinstance(cur.get(k), (int, float)) and not isinstance(cur.get(k), bool) for k in CUR_FIELDS)):
        raise UserError(f"{path}: must hold the numbers {', '.join(CUR_FIELDS)}; re-run `mmtm eval-cur`")
    which = "best" if path.name == CUR_JSON else "last"
    if cur.get("split") != "test":
        raise UserError(f"{path}: holds the {cur.get('split')!r} split, not the test split its name says; rename "
                        f"it cur-{cur.get('split')}-{which}.json and run `mmtm eval-cur {path.parent} --checkpoint "
                        f"{which}` for the test split")
    if Path(str(cur.get("checkpoint"))).name != f"{which}.pt":
        raise UserError(f"{path}: measures the checkpoint {cur.get('checkpoint')}, not the run's {which}.pt its name "
                        f"says; run `mmtm eval-cur {path.parent} --checkpoint {which}`")
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


def check_resumable(checkpoint: str | os.PathLike, saved: TrainConfig, cfg: TrainConfig) -> None:
    """A resume with settings `cfg` continues the checkpoint's run `saved` as it was: they differ only in
    MAY_CHANGE_ON_RESUME."""
    old, new = to_dict(saved), to_dict(cfg)
    changed = [f"{k} {old[k]!r} → {new[k]!r}" for k in old if k not in MAY_CHANGE_ON_RESUME and old[k] != new[k]]
    if changed:
        raise UserError(f"{checkpoint}: --resume continues the run as it was trained, but the settings asked for "
                        f"(config.json and flags) differ from it: {', '.join(changed)}; resume without changing "
                        "them, or train them as a new run in another --out")


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
            missing = [k for k in fields if k not in (reader.fieldnames or ()) and k not in GRAPH_STEP_FIELDS]
            if missing:
                raise UserError(f"{path}: no column {', '.join(missing)}; the header must be {','.join(fields)}")
            rows = list(reader)
        for row in rows:
            for k in GRAPH_STEP_FIELDS:
                if k in fields:
                    row.setdefault(k, "nan")
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
