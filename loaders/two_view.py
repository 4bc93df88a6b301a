"""The one loader interface both backends implement, and the factory that picks a backend."""
from __future__ import annotations

import math
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from loaders.dataset import DatasetError, PreparedDataset, Row, check_view, open_dataset
from loaders.sampling import epoch_order, flip_table, num_rank_rows, split_batches
from mmtm.errors import UserError

# ImageNet statistics on the 0..255 scale: the paper's backbones were pretrained with them.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
BACKENDS = ("dali", "torch")


class Batch(NamedTuple):
    view0: torch.Tensor  # float32 [N,3,H,W], ImageNet-normalised
    view1: torch.Tensor  # float32 [N,3,H,W], the same objects as view0
    label: torch.Tensor  # int64 [N]
    index: torch.Tensor  # int64 [N], the object's row in the split's index file


class BackendUnavailable(UserError, ImportError):
    """A backend was asked for by name but its package does not import (also an ImportError)."""


class TwoViewLoader(ABC):
    """Epoch bookkeeping shared by the backends; a backend only turns row batches into Batches.

    Iterate once per epoch; len() is the number of batches per epoch. `set_epoch(e)` makes the
    next iteration use epoch e's order and flips; without it each iteration advances the epoch
    by one, starting at 0. Attributes: num_samples (objects this rank gets per epoch, after the
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
        order = epoch_order(self.num_rows, train=self.train, seed=self.seed, epoch=epoch,
                            rank=self.rank, world_size=self.world_size)
        batches = split_batches(order, self.batch_size, drop_last=self.train)
        if self.train:
            flips = flip_table(self.num_rows, seed=self.seed, epoch=epoch)
        else:
            flips = np.zeros((self.num_rows, 2), dtype=bool)
        epoch_batches = self._iterate(batches, flips)
        self._active = weakref.ref(epoch_batches)
        return epoch_batches

    @abstractmethod
    def _iterate(self, batches: list[np.ndarray], flips: np.ndarray) -> Generator[Batch, None, None]:
        """Yield one Batch per entry of `batches` (row indices); flips[row, slot] mirrors a view."""


def two_view_loader(data_dir: str | os.PathLike, split: str, *, views: Sequence[int] = (0, 6), batch_size: int,
                    train: bool, seed: int, backend: str = "auto", device: str | torch.device = "auto",
                    rank: int = 0, world_size: int = 1, num_threads: int = 2) -> TwoViewLoader:
    """Batches of two views of the same objects of one split, see `TwoViewLoader`.

    train=True: seeded shuffle per epoch, independent random horizontal flip per view (the paper's
    train transform), last partial batch dropped. train=False: index-file order, no augmentation,
    partial last batch kept. With world_size > 1 each rank gets its share (see `epoch_order`).
    backend: "dali", "torch" or "auto" (dali when it imports); device: "cpu", "cuda[:i]" or "auto".
    """
    if batch_size < 1 or num_threads < 1:
        raise ValueError(f"batch_size ({batch_size}) and num_threads ({num_threads}) must be at least 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
    name = _resolve_backend(backend)
    dev = _resolve_device(device)
    dataset = open_dataset(data_dir)
    if len(views) != 2:
        raise UserError(f"two views are needed, got {list(views)}")
    for v in views:
        check_view(v)
    rows = dataset.rows(split)
    if not rows:
        raise DatasetError(f"{dataset.root}: split {split!r} has no objects; re-run `mmtm prep`")
    share = num_rank_rows(len(rows), train=train, rank=rank, world_size=world_size)
    if train and share < batch_size:  # an epoch without a single batch would train silently on nothing
        raise UserError(f"split {split!r} gives rank {rank} of {world_size} only {share} objects, "
                        f"less than one batch of {batch_size}; lower the batch size")
    if name == "dali":
        from loaders.dali_pipeline import DaliTwoViewLoader as cls
    else:
        from loaders.torch_pipeline import TorchTwoViewLoader as cls
    return cls(dataset, split, rows, views=(int(views[0]), int(views[1])), batch_size=batch_size, train=train,
               seed=seed, device=dev, rank=rank, world_size=world_size, num_threads=num_threads)


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown loader backend {backend!r}; expected auto, {', '.join(BACKENDS)}")
    dali_found = _dali_imports()
    if backend == "auto":
        return "dali" if dali_found else "torch"
    if backend == "dali" and not dali_found:
        raise BackendUnavailable("loader backend 'dali' needs NVIDIA DALI, which does not import; "
                                 "install it with `pip install -e .[dali]` or use the torch backend")
    return backend


def _dali_imports() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; expected auto, cpu or cuda[:index]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type != "cpu":
        raise UserError(f"device {device!r} is not supported; expected cpu or cuda[:index]")
    return dev
