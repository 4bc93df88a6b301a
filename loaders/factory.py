"""`two_view_loader`: the one entry point of the loading side; it checks the request and picks a backend."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from mmtm.loaders.dataset import DatasetError, open_dataset
from mmtm.loaders.device import resolve_device
from mmtm.loaders.errors import UserError
from mmtm.loaders.sampling import num_rank_rows
from mmtm.loaders.torch_backend import TorchTwoViewLoader
from mmtm.loaders.two_view import TwoViewLoader

BACKENDS = ("dali", "torch")


class BackendUnavailable(UserError, ImportError):
    """A backend was asked for by name but its package does not import (also an ImportError)."""


def two_view_loader(data_dir: str | os.PathLike, split: str, *, views: Sequence[int] | None = None, batch_size: int,
                    train: bool, seed: int, backend: str = "auto", device: str | torch.device = "auto",
                    rank: int = 0, world_size: int = 1, num_threads: int = 2,
                    source_workers: int | None = None) -> TwoViewLoader:
    """Batches of two views of the same objects of one split, see `TwoViewLoader`.

    views: two view indices; None = the dataset's `default_views`.
    train=True: seeded shuffle per epoch, independent random horizontal flip per view (the paper's
    train transform) where dataset.json allows it, last partial batch dropped. train=False: index-file order,
    no augmentation, partial last batch kept. With world_size > 1 each rank gets its share (see `epoch_order`).
    backend: "dali", "torch" or "auto" (dali when it imports); device: "cpu", "cuda[:i]" or "auto".
    num_threads: DALI threads or DataLoader worker processes; 0 (torch only) reads in the calling process.
    source_workers (DALI): processes that read the files, so the thread driving the GPU never does; None = 0 on
    the CPU (they would compete for its cores), a quarter of the cores (at most 4) with a GPU.
    """
    if batch_size < 1 or num_threads < 0:
        raise UserError(f"the batch size ({batch_size}) must be at least 1 and the loader threads ({num_threads}) "
                        f"at least 0")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
    name = resolve_backend(backend)
    if num_threads == 0 and name != "torch":
        raise UserError(f"loader threads 0 (read in the training process) needs the torch loader, not {name}")
    dev = resolve_device(device)
    dataset = open_dataset(data_dir)
    views = dataset.default_views if views is None else views
    if len(views) != 2:
        raise UserError(f"two views are needed, got {list(views)}")
    for v in views:
        dataset.check_view(v)
    rows = dataset.rows(split)
    if not rows:
        raise DatasetError(f"{dataset.root}: split {split!r} has no objects; re-run `mmtm prep`")
    share = num_rank_rows(len(rows), train=train, rank=rank, world_size=world_size)
    if train and share < batch_size:  # an epoch without a single batch would train silently on nothing
        raise UserError(f"split {split!r} gives rank {rank} of {world_size} only {share} objects, "
                        f"less than one batch of {batch_size}; lower the batch size")
    common = dict(views=(int(views[0]), int(views[1])), batch_size=batch_size, train=train, seed=seed, device=dev,
                  rank=rank, world_size=world_size, num_threads=num_threads)
    if name == "torch":
        return TorchTwoViewLoader(dataset, split, rows, **common)
    from mmtm.loaders.dali_backend import DaliTwoViewLoader  # DALI is optional: imported only when used
    if source_workers is None:
        source_workers = 0 if dev.type == "cpu" else min(4, max(1, (os.cpu_count() or 4) // 4))
    if source_workers < 0:
        raise ValueError(f"source_workers must not be negative, got {source_workers}")
    return DaliTwoViewLoader(dataset, split, rows, source_workers=source_workers, **common)


def resolve_backend(backend: str) -> str:
    """The backend `backend` names; auto = dali when it imports, else torch."""
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown loader backend {backend!r}; expected auto, {', '.join(BACKENDS)}")
    if backend == "torch":
        return backend  # without importing DALI, which takes ~0.5 s
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
