"""The one loader interface both backends implement: `Batch`, the pixel statistics and `TwoViewLoader`."""
from __future__ import annotations

import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from typing import NamedTuple

import numpy as np
import torch

from mmtm.loaders.dataset import PreparedDataset, Row
from mmtm.loaders.sampling import epoch_plan, num_rank_rows

# ImageNet statistics on the 0..255 scale: the paper's backbones were pretrained with them.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Batch(NamedTuple):
    view0: torch.Tensor  # float32 [N,3,H,W], ImageNet-normalised
    view1: torch.Tensor  # float32 [N,3,H,W], the same objects as view0
    label: torch.Tensor  # int64 [N]
    index: torch.Tensor  # int64 [N], the object's row in the split's index file


class TwoViewLoader(ABC):
    """Epoch bookkeeping shared by the backends; a backend only turns row batches into Batches.

    Iterate once per epoch; len() is the number of batches per epoch. `set_epoch(e)` makes the
    next iteration use epoch e's order and flips; without it each iteration advances the epoch
    by one, starting at 0. Views are flipped only where dataset.json allows it (`flip`).
    Attributes: num_samples (objects this rank gets per epoch, after the
    train tail drop), classes, dataset (PreparedDataset), backend ("dali"|"torch"), device.
    Leaving an epoch early is fine: the next iteration starts cleanly.
    """

    backend: str

    def __init__(self, dataset: PreparedDataset, split: str, rows: list[Row], *, views: tuple[int, int],
                 batch_size: int, train: bool, seed: int, device: torch.device, rank: int, world_size: int,
                 num_threads: int):
        self.dataset = dataset
        self.split = split
        self.classes = dataset.classes
        self.views = views
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.num_threads = num_threads
        self.flip = dataset.flips
        self.num_rows = len(rows)
        self.labels = np.array([r.label for r in rows], dtype=np.int64)
        self.paths = [(str(dataset.view_path(r, views[0])), str(dataset.view_path(r, views[1]))) for r in rows]
        rank_rows = num_rank_rows(len(rows), train=train, rank=rank, world_size=world_size)
        # train drops the last partial batch: BatchNorm fails on a batch of one, and equal
        # batch counts keep DDP ranks in step. eval keeps it so every object is scored once.
        self._num_batches = rank_rows // batch_size if train else math.ceil(rank_rows / batch_size)
        self.num_samples = self._num_batches * batch_size if train else rank_rows
        self._epoch = 0
        # weak: a strong reference would tie loader and suspended generator in a cycle, and a
        # loader dropped mid-epoch would keep its pipeline or workers until a GC pass.
        self._active: weakref.ref[Generator[Batch, None, None]] | None = None

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        previous = self._active() if self._active is not None else None
        if previous is not None:  # an earlier epoch was left early: let its backend clean up first
            previous.close()
        epoch, self._epoch = self._epoch, self._epoch + 1
        batches, flips = epoch_plan(self.num_rows, batch_size=self.batch_size, train=self.train, seed=self.seed,
                                    epoch=epoch, rank=self.rank, world_size=self.world_size, flip=self.flip)
        epoch_batches = self._iterate(epoch, batches, flips)
        self._active = weakref.ref(epoch_batches)
        return epoch_batches

    @abstractmethod
    def _iterate(self, epoch: int, batches: list[np.ndarray], flips: np.ndarray) -> Generator[Batch, None, None]:
        """Yield one Batch per entry of `batches` (row indices) of `epoch`; flips[row, slot] mirrors a view."""
