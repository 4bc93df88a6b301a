"""TensorBoard scalars of a run, under RUN/tb/, so `tensorboard --logdir runs/` shows runs side by side.

Optional: it needs the `tensorboard` package (`pip install -e .[tensorboard]`); without it training runs as
usual and says once that it writes no tb/. Everything is plotted against the global step (epoch scalars at the
step their epoch ended), so a resumed run purges what a crashed one wrote past its last checkpoint.
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
              "val_acc": "epoch/val_acc", "val_acc_m0": "epoch/val_acc_m0", "val_acc_m1": "epoch/val_acc_m1",
              "d_speed": "epoch/d_speed", "d_speed_window": "epoch/d_speed_window",
              "rebalance_m0_steps": "epoch/rebalance_m0_steps", "rebalance_m1_steps": "epoch/rebalance_m1_steps"}


class TensorBoardLog:
    def __init__(self, folder: Path, *, enabled: bool, purge_step: int | None = None):
        self.writer = None
        self._open = None  # makes the writer, and with it tb/, when the first epoch has finished
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("note: tensorboard is not installed, so this run writes no tb/ "
                  "(pip install -e .[tensorboard])", file=sys.stderr)
            return
        self._open = lambda: SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def epoch(self, steps: list[dict], row: dict, end_step: int) -> None:
        """The epoch's per-step rows (steps.csv) and its row (epochs.csv)."""
        if self.writer is None and self._open is not None:
            self.writer = self._open()
        if self.writer is None:
            return
        for s in steps:
            for key, tag in STEP_TAGS.items():
                self.writer.add_scalar(tag, s[key], s["step"])
        for key, tag in EPOCH_TAGS.items():
            value = row[key]
            if not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, value, end_step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
