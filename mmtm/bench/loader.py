"""Loader throughput: images/s and CPU ms per image of each backend and of an in-memory ceiling.

A repeat runs training epochs (shuffle + flips) back to back: `warmup_batches` untimed, then
timed batches (see `_measure`); the result is the median over repeats. Images count two per
object (two views). Both backends get `threads` workers (DALI threads, DataLoader processes).
CPU time covers this process and its children (DataLoader workers, read live from /proc), so
worker processes do not hide cost. The "memory" ceiling holds decoded uint8 views in RAM (or on
the GPU) and only batches, flips and normalises: what a loader would cost if decoding were free.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import BACKENDS, BackendUnavailable, two_view_loader
from mmtm.loaders.files import read_encoded
from mmtm.loaders.sampling import epoch_order, flip_table, split_batches
from mmtm.loaders.torch_backend import mirror, normalize_pixels
from mmtm.loaders.two_view import Batch

_SEED = 0
_MIN_SECONDS = 1.0  # per repeat without max_batches: long enough to average out scheduler noise
_MEMORY_MAX_OBJECTS = 1024  # the ceiling cycles over at most this many decoded objects, bounding RAM


def bench_loader(data_dir: str | os.PathLike, *, batch_size: int = 32, threads: int = 2,
                 views: tuple[int, int] | None = None, split: str = "train", repeats: int = 3,
                 warmup_batches: int = 2, max_batches: int | None = None, device: str = "auto",
                 source_workers: int | None = None) -> dict:
    """{"results": {backend: {"images_per_s", "cpu_ms_per_image", ...}}, "config": {...}}; medians over repeats.
    views None: the dataset's default views."""
    if threads < 1 or repeats < 1 or warmup_batches < 0 or (max_batches is not None and max_batches < 1):
        raise UserError("threads, repeats and max_batches must be at least 1, warmup_batches at least 0")
    results: dict[str, dict] = {}
    loader = None
    with _single_torch_thread():
        for backend in BACKENDS:
            try:
                loader = two_view_loader(data_dir, split, views=views, batch_size=batch_size, train=True,
                                         seed=_SEED, backend=backend, device=device, num_threads=threads,
                                         source_workers=source_workers)
            except BackendUnavailable:
                continue
            results[backend] = _measure(loader, repeats, warmup_batches, max_batches)
        assert loader is not None  # the torch backend always imports
        results["memory"] = _measure(_InMemory(loader, threads), repeats, warmup_batches, max_batches)
    dataset = loader.dataset
    config = {
        "data": str(Path(data_dir).resolve()), "split": split, "objects": loader.num_rows,
        "image_size": dataset.image_size, "encoding": dataset.encoding, "views": list(loader.views),
        "batch_size": batch_size, "threads": threads, "repeats": repeats, "warmup_batches": warmup_batches,
        "max_batches": max_batches, "device": str(loader.device), "source_workers": source_workers,
        "backends": [b for b in results if b != "memory"],
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "dali": _dali_version(),
    }
    return {"results": results, "config": config}


def _measure(loader, repeats: int, warmup_batches: int, max_batches: int | None) -> dict:
    """Median over repeats; a repeat runs on across epochs (as training does) until `max_batches`
    timed batches, or without it, until the first epoch is done and _MIN_SECONDS have passed."""
    first_epoch = len(loader) - warmup_batches
    if first_epoch < 1:
        raise UserError(f"an epoch has {len(loader)} batches, too few to time after {warmup_batches} warm-up "
                        "batches; use a larger split or a smaller batch size")
    rates, cpu_ms = [], []
    for _ in range(repeats):
        batches = _endless(loader)
        for _ in range(warmup_batches):
            next(batches)
        _sync(loader.device)
        start, cpu, images, timed = time.perf_counter(), _cpu_seconds(), 0, 0
        while True:
            images += 2 * len(next(batches).index)
            timed += 1
            if max_batches is not None:
                if timed >= max_batches:
                    break
            elif timed >= first_epoch and time.perf_counter() - start >= _MIN_SECONDS:
                break
        _sync(loader.device)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        batches.close()
        rates.append(images / wall)
        cpu_ms.append(1000 * cpu / images)
    return {"images_per_s": statistics.median(rates), "cpu_ms_per_image": statistics.median(cpu_ms),
            "images_per_s_runs": rates}


def _endless(loader) -> Iterator[Batch]:
    while True:
        batches = iter(loader)
        try:
            yield from batches
        finally:
            batches.close()


class _InMemory:
    """The in-memory ceiling: the loader's epochs (order, flips, batches) over pre-decoded views.

    `threads` Python threads each build whole batches (torch ops release the GIL), the same
    coarse-grained parallelism the loaders' workers have."""

    def __init__(self, like, threads: int):
        self.device, self.batch_size, self.num_rows = like.device, like.batch_size, like.num_rows
        self.threads = threads
        stored = min(like.num_rows, _MEMORY_MAX_OBJECTS)
        decoded = [[decode_image(torch.from_numpy(read_encoded(p)), mode=ImageReadMode.RGB) for p in like.paths[r]]
                   for r in range(stored)]
        self._store = torch.stack([torch.stack(pair) for pair in decoded]).to(self.device)  # [objects,2,3,H,W] u8
        self._labels = torch.from_numpy(like.labels).to(self.device)
        self._num_batches = len(like)
        self._epoch = 0

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[Batch]:
        epoch, self._epoch = self._epoch, self._epoch + 1
        order = epoch_order(self.num_rows, train=True, seed=_SEED, epoch=epoch, rank=0, world_size=1)
        mirrors = torch.from_numpy(flip_table(self.num_rows, seed=_SEED, epoch=epoch)).to(self.device)
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(self.threads) as pool:
            for rows in split_batches(order, self.batch_size, drop_last=True)[:self._num_batches]:
                pending.append(pool.submit(self._batch, rows, mirrors))
                if len(pending) > self.threads:  # keep every thread busy, but only one batch ahead
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _batch(self, rows: np.ndarray, mirrors: torch.Tensor) -> Batch:
        index = torch.from_numpy(rows).to(self.device)
        pairs = self._store[index % len(self._store)]
        return Batch(normalize_pixels(mirror(pairs[:, 0], mirrors[index, 0])),
                     normalize_pixels(mirror(pairs[:, 1], mirrors[index, 1])), self._labels[index], index)


def _cpu_seconds() -> float:
    """CPU seconds of this process plus its children: reaped ones (getrusage) and live ones (/proc)."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + reaped.ru_utime + reaped.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _live_children():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _live_children() -> list[int]:
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return pids


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """All parallelism comes from the `threads` workers; torch's intra-op pool on top would only
    oversubscribe the cores (and its spinning OpenMP threads stall badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dali_version() -> str | None:
    try:
        import nvidia.dali
    except ImportError:
        return None
    return nvidia.dali.__version__
