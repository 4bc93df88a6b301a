"""Training progress: rich epoch and batch bars on a terminal, one plain line per epoch otherwise."""
from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(x: float) -> str:
    """A d_speed, or `—` where there is none (a single-view run has one branch)."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"


class TrainProgress:
    def __init__(self, enabled: bool = True, total_epochs: int = 1, console: Console | None = None,
                 single_view: int | None = None):
        self.enabled = enabled
        self.heads = (0, 1) if single_view is None else (single_view,)  # a single-view run has the head of its view
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.total_epochs = total_epochs
        self._progress: Progress | None = None
        self._loss = self._acc = 0.0
        self._n = 0

    def __enter__(self) -> "TrainProgress":
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self._progress.start()
            self._epochs = self._progress.add_task("epochs", total=self.total_epochs, info="")
            self._batches = self._progress.add_task("batches", total=1, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        self._loss = self._acc = 0.0
        self._n = 0
        if self._progress is not None:
            self._progress.update(self._epochs, completed=epoch)
            self._progress.reset(self._batches, total=n_batches, description=f"epoch {epoch}", info="")

    def step(self, loss: float, acc: float, d_speed: float) -> None:
        self._n += 1
        self._loss += (loss - self._loss) / self._n
        self._acc += (acc - self._acc) / self._n
        if self._progress is not None:
            self._progress.update(self._batches, advance=1,
                                  info=f"loss {self._loss:.3f}  acc {self._acc:.3f}  d_speed {_fmt(d_speed)}")

    def _head(self, row: dict, head: int) -> str:
        return f"m{head} {row[f'val_acc_m{head}']:.3f}" if head in self.heads else f"m{head} —"

    def note(self, text: str) -> None:
        """One line about the run as a whole (where a resume starts, a run already complete), on stderr."""
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def end_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        line = (f"epoch {row['epoch']:>3}  lr {row['lr']:.2g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.3f}  val acc {row['val_acc']:.3f} ({self._head(row, 0)}, "
                f"{self._head(row, 1)})  d_speed {_fmt(row['d_speed'])}  "
                f"rebalance m0/m1 {row['rebalance_m0_steps']}/{row['rebalance_m1_steps']}  {row['seconds']:.1f}s")
        if self._progress is not None:
            self._progress.update(self._epochs, completed=row["epoch"] + 1)
            self._progress.console.print(line)
        else:
            print(line, flush=True)
