"""TensorBoard scalars of a run, under RUN/tb/, so `tensorboard --logdir runs/` shows runs side by side.

Optional: it needs the `tensorboard` package (`pip install -e .[tensorboard]`); without it training runs as
usual and says once that it writes no tb/. Everything is plotted against the global step: a step's scalars at its
own step, an epoch's (validation loss and accuracy among them) at the epoch's last step, and the CUR of a checkpoint
(`cur/…` for best.pt, `cur_last/…` for last.pt, d_util among them, written by `mmtm eval-cur`) at the last step of
the epoch it was saved after. The run's settings go to the HParams tab, with these scalars as its metrics.

A resumed run opens its writer with `purge_step` = the checkpoint's step, and TensorBoard then drops every event at
that step or later from the earlier files: what a crashed run wrote past its last checkpoint. Epoch scalars sit at
the epoch's last step, below that, so the epoch the checkpoint ends keeps its summary (at the step after it, the
first step of the next epoch, a purge took it away).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

# steps.csv column → TensorBoard tag
STEP_TAGS = {"loss": "train/loss", "d_speed": "d_speed/cumulative", "d_speed_step": "d_speed/step",
             "d_speed_window": "d_speed/window", "d_speed_signal": "d_speed/signal",
             "s_m1_m0": "cls/s_m1_m0", "s_m0_m1": "cls/s_m0_m1"}
# epochs.csv column → TensorBoard tag
EPOCH_TAGS = {"lr": "epoch/lr", "train_loss": "epoch/train_loss", "train_acc": "epoch/train_acc",
              "val_loss": "epoch/val_loss", "val_acc": "epoch/val_acc", "val_acc_m0": "epoch/val_acc_m0",
              "val_acc_m1": "epoch/val_acc_m1", "d_speed": "epoch/d_speed", "d_speed_window": "epoch/d_speed_window",
              "rebalance_m0_steps": "epoch/rebalance_m0_steps", "rebalance_m1_steps": "epoch/rebalance_m1_steps"}
# cur.json key → TensorBoard tag (under `cur/` for best.pt, `cur_last/` for last.pt)
CUR_KEYS = ("acc", "acc_m0", "acc_m1", "u_m1_given_m0", "u_m0_given_m1", "d_util")
CUR_PREFIX = {"best": "cur", "last": "cur_last"}
# What the HParams tab compares runs by.
METRICS = ("epoch/val_acc", "epoch/val_loss", "epoch/d_speed", "cur/acc", "cur/d_util")


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    def __init__(self, folder: Path, *, enabled: bool, purge_step: int | None = None, hparams: dict | None = None):
        self.writer = None
        self._open = None  # makes the writer, and with it tb/, when the first epoch has finished
        self._hparams = hparams
        if not enabled:
            return
        writer = _writer_class()
        if writer is None:
            print("note: tensorboard is not installed, so this run writes no tb/ "
                  "(pip install -e .[tensorboard])", file=sys.stderr)
            return
        self._open = lambda: writer(log_dir=str(folder), purge_step=purge_step)

    def epoch(self, steps: list[dict], row: dict, end_step: int) -> None:
        """The epoch's per-step rows (steps.csv) and its row (epochs.csv); `end_step` = the steps done after it."""
        if self.writer is None and self._open is not None:
            self.writer = self._open()
            if self._hparams is not None:
                _write_hparams(self.writer, self._hparams)
        if self.writer is None:
            return
        for s in steps:
            for key, tag in STEP_TAGS.items():
                self.writer.add_scalar(tag, s[key], s["step"])
        for key, tag in EPOCH_TAGS.items():
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, value, end_step - 1)
        self.writer.flush()  # an interrupt must not lose an epoch whose checkpoint is on disk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_cur(folder: Path, cur: dict, which: str, end_step: int) -> None:
    """A checkpoint's CUR (cur.json or cur-last.json, `which` = best | last) into the run's tb/, at the last step of
    the epoch it was saved after (`end_step` = its steps done); nothing without tensorboard or without a tb/ (a run
    trained without it)."""
    writer_class = _writer_class()
    if writer_class is None or not Path(folder).is_dir():
        return
    prefix = CUR_PREFIX.get(which, "cur")  # a checkpoint given by path reports as best.pt does (cur.json)
    writer = writer_class(log_dir=str(folder))
    try:
        for key in CUR_KEYS:
            value = cur.get(key)
            if value is not None and not math.isnan(value):
                writer.add_scalar(f"{prefix}/{key}", value, end_step - 1)
    finally:
        writer.close()


def _write_hparams(writer, config: dict) -> None:
    """The run's settings into the writer's own folder (SummaryWriter.add_hparams would open a sub-folder, which
    TensorBoard shows as another run)."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    for summary in hparams(values, dict.fromkeys(METRICS, 0.0)):
        writer.file_writer.add_summary(summary)
