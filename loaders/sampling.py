"""Which objects a rank sees in an epoch, in which order, and which views are flipped.

Everything is a pure function of (seed, epoch, rank, world_size), so both backends give the
same batches and the same flips, and a run can be reproduced or resumed at any epoch.
"""
from __future__ import annotations

import numpy as np

# Separate random streams of one (seed, epoch), so the flips do not depend on the order.
_ORDER_STREAM = 0
_FLIP_STREAM = 1


def epoch_order(num_rows: int, *, train: bool, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices this rank reads in this epoch, in reading order (before batching).

    train: a permutation drawn from (seed, epoch), truncated to a multiple of world_size so every
    rank gets the same count (DDP needs equal batch counts), then rank r takes perm[r::world_size].
    eval: file order, rows r::world_size, no padding; the ranks' rows are disjoint and cover the split.
    """
    if not train:
        return np.arange(rank, num_rows, world_size, dtype=np.int64)
    perm = np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_rows)
    usable = num_rows - num_rows % world_size
    return perm[:usable][rank::world_size].astype(np.int64)


def flip_table(num_rows: int, *, seed: int, epoch: int) -> np.ndarray:
    """bool [num_rows, 2]: whether view slot 0/1 of each row is mirrored in this epoch.

    Indexed by the row, not its position, so the decision does not depend on the rank count."""
    return np.random.default_rng([seed, epoch, _FLIP_STREAM]).random((num_rows, 2)) < 0.5


def split_batches(order: np.ndarray, batch_size: int, *, drop_last: bool) -> list[np.ndarray]:
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def num_rank_rows(num_rows: int, *, train: bool, rank: int, world_size: int) -> int:
    """len(epoch_order(...)) without drawing the permutation."""
    if train:
        return num_rows // world_size
    return len(range(rank, num_rows, world_size))


def epoch_plan(num_rows: int, *, batch_size: int, train: bool, seed: int, epoch: int, rank: int,
               world_size: int, flip: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """(batches of row indices, flips [num_rows, 2]) of one epoch: what every backend reads, in this order.

    train: seeded order, flips drawn per row and view (unless `flip` is False: the data allows no mirroring), the
    last partial batch dropped (BatchNorm cannot take a batch of one; DDP ranks need equal batch counts).
    eval: file order, no flips, the partial batch kept."""
    order = epoch_order(num_rows, train=train, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    flips = (flip_table(num_rows, seed=seed, epoch=epoch) if train and flip
             else np.zeros((num_rows, 2), dtype=bool))
    return split_batches(order, batch_size, drop_last=train), flips
