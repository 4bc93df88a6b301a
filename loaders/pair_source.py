"""The DALI backend's source: batch k of an epoch → both views of the same rows, in one batch of 2N samples.

A pure function of (epoch, iteration) — the plan comes from mmtm.loaders.sampling, as the torch twin's does — so it
gives the same batches in the consumer's thread or in DALI's worker processes. It imports no torch and no DALI,
so a spawned worker starts quickly, and it keeps no reference to the loader (no cycle)."""
from __future__ import annotations

import numpy as np

from mmtm.loaders.files import read_intact
from mmtm.loaders.sampling import epoch_plan


class PairSource:
    def __init__(self, paths: list[tuple[str, str]], *, image_size: int, batch_size: int, train: bool, seed: int,
                 rank: int, world_size: int, first_epoch: int, flip: bool = True):
        self.paths, self.image_size = paths, image_size
        self.plan = dict(batch_size=batch_size, train=train, seed=seed, rank=rank, world_size=world_size, flip=flip)
        self.first_epoch = first_epoch  # DALI counts epochs from 0 at each pipeline build
        self.stop = False               # consumer-thread mode only: end the epoch early
        self._cached: tuple[int, list[np.ndarray], np.ndarray] | None = None

    def epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, *epoch_plan(len(self.paths), epoch=epoch, **self.plan))
        return self._cached[1], self._cached[2]

    def __call__(self, info) -> tuple:
        batches, flips = self.epoch(self.first_epoch + info.epoch_idx)
        if self.stop or info.iteration >= len(batches):
            raise StopIteration
        rows = batches[info.iteration]
        # Broken bytes are named here: handed on, the native decoder would print its own lines first.
        encoded = [read_intact(self.paths[r][slot], self.image_size) for slot in (0, 1) for r in rows]
        mirror = np.ascontiguousarray(flips[rows].T.reshape(-1).astype(np.int32))
        return encoded, mirror
