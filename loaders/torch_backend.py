"""The torch backend: the DALI pipeline's twin, for machines without DALI and as its baseline.

The same batches and flips as the DALI backend (both come from `mmtm.loaders.sampling`). DataLoader
workers read one whole batch per task (one message per batch, no per-sample collate):
- CPU decode (device cpu, or PNG files): workers decode, mirror while copying into the batch, and
  send [N,3,H,W] uint8, 4x fewer bytes through shared memory than float; the main process
  normalises on the target device.
- JPEG on a GPU: workers only read the bytes; the main process decodes the batch with nvJPEG
  (`decode_jpeg(device="cuda")`), then mirrors and normalises on the GPU.
"""
from __future__ import annotations

import functools
import gc
import warnings
import weakref
from collections.abc import Generator, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mmtm.loaders.dataset import DatasetError
from mmtm.loaders.files import batch_failure, decode_error, read_encoded, size_error
from mmtm.loaders.two_view import MEAN, STD, Batch, TwoViewLoader

# torchvision 0.29 warns on every decode call that TorchCodec will replace it; that is not news per batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


@functools.cache
def _scale_bias(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor([1 / s for s in STD], device=device).view(1, 3, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(MEAN, STD)], device=device).view(1, 3, 1, 1)
    return scale, bias


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float32 ImageNet-normalised, as DALI's crop_mirror_normalize computes it.

    Convert, then in-place mul_/add_ with [1,3,1,1] constants: each pass vectorises, unlike one
    addcmul mixing uint8 and float operands (about 2x slower on CPU). On CPU the output comes from
    numpy's allocator, which asks for transparent huge pages for large arrays (measured at 224 px:
    ~90 -> ~10 page faults and ~20% less CPU per image)."""
    if images.device.type == "cpu":
        out = torch.from_numpy(np.empty(tuple(images.shape), np.float32)).copy_(images)
    else:
        out = images.float()
    scale, bias = _scale_bias(out.device)
    return out.mul_(scale).add_(bias)


def mirror(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """images with images[mask] mirrored horizontally; a select on the device, so the host never waits for the GPU
    (a boolean index or `mask.any()` would)."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


class _BatchReader(Dataset):
    """Worker side: (rows, mirror [N,2]) -> (rows, view0, view1), mirrored uint8 batches, or lists of
    encoded JPEG bytes when `decode` is False; a bad file comes back as its one-line message
    (DataLoader would wrap an exception in a multi-line traceback)."""

    def __init__(self, paths: list[tuple[str, str]], size: int, decode: bool):
        self.paths = paths
        self.size = size
        self.decode = decode

    def __getitem__(self, item: tuple[np.ndarray, np.ndarray]):
        rows, mirror = item
        try:
            if not self.decode:
                return (torch.from_numpy(rows),
                        *([torch.from_numpy(read_encoded(self.paths[r][slot])) for r in rows] for slot in (0, 1)))
            return (torch.from_numpy(rows),
                    *(self._decode([self.paths[r][slot] for r in rows], mirror[:, slot]) for slot in (0, 1)))
        except DatasetError as e:
            return str(e)

    def _decode(self, paths: list[str], mirror: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(paths), 3, self.size, self.size), dtype=torch.uint8)
        for k, path in enumerate(paths):
            data = torch.from_numpy(read_encoded(path))
            try:
                img = decode_image(data, mode=ImageReadMode.RGB)  # grey files come out as RGB too
            except RuntimeError:
                raise decode_error(path) from None
            if img.shape[1:] != (self.size, self.size):
                raise size_error(path, img.shape[1], img.shape[2], self.size)
            out[k] = img.flip(-1) if mirror[k] else img
        return out


def _as_is(item):
    """The reader already returns whole batches; skip DataLoader's recursive conversion."""
    return item


class _EpochItems:
    """The DataLoader's sampler: this epoch's (rows, mirror) tasks, replaced at each epoch."""

    def __init__(self):
        self.items: list[tuple[np.ndarray, np.ndarray]] = []

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# Each loader's DataLoader (with its persistent workers) lives here, never inside an object graph
# the cyclic GC could collect: finalising a DataLoader iterator as garbage closes its queues
# before its shutdown message is sent, and the shutdown then stalls 5 s per worker. A
# weakref.finalize on the loader drops the entry, and the iterator shuts its workers down at once.
_WORKER_POOLS: dict[int, DataLoader] = {}


class TorchTwoViewLoader(TwoViewLoader):
    backend = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        gpu = self.device.type == "cuda"
        self._gpu_decode = gpu and self.dataset.encoding == "jpeg"
        self._labels = torch.from_numpy(self.labels).to(self.device)
        self._items = _EpochItems()
        reader = _BatchReader(self.paths, self.dataset.image_size, decode=not self._gpu_decode)
        # Persistent workers: forking two workers per epoch cost ~0.15 s of CPU here and cut
        # throughput up to 3x on a 200-object set. No workers (0) reads in this process: no fork
        # of a large process, which tiny sets and debuggers prefer. Pinned memory only helps
        # decoded batches for a GPU.
        _WORKER_POOLS[id(self)] = DataLoader(
            reader, batch_size=None, sampler=self._items, collate_fn=_as_is, num_workers=self.num_threads,
            persistent_workers=self.num_threads > 0, pin_memory=gpu and not self._gpu_decode)
        weakref.finalize(self, _WORKER_POOLS.pop, id(self), None)

    def _iterate(self, epoch: int, batches: list[np.ndarray], flips: np.ndarray) -> Generator[Batch, None, None]:
        if not batches:
            return
        self._items.items = [(rows, flips[rows]) for rows in batches]
        mirrors = torch.from_numpy(flips).to(self.device) if self._gpu_decode else None
        # iter() forks the workers the first time. Freezing the GC keeps a child from ever
        # collecting garbage it inherited: a DALI pipeline in an uncollected cycle (an exception's
        # traceback, say) would run its destructor there and wait forever for executor threads the
        # child does not have.
        gc.freeze()
        try:
            items = iter(_WORKER_POOLS[id(self)])
        finally:
            gc.unfreeze()
        for item in items:
            if isinstance(item, str):
                raise DatasetError(item)
            rows, view0, view1 = item
            index = rows.to(self.device, non_blocking=True)
            if self._gpu_decode:
                view0 = mirror(self._decode_gpu(rows, view0, 0), mirrors[index, 0])
                view1 = mirror(self._decode_gpu(rows, view1, 1), mirrors[index, 1])
            else:  # already mirrored by the worker
                view0 = view0.to(self.device, non_blocking=True)
                view1 = view1.to(self.device, non_blocking=True)
            yield Batch(normalize_pixels(view0), normalize_pixels(view1), self._labels[index], index)

    def _decode_gpu(self, rows: torch.Tensor, encoded: list[torch.Tensor], slot: int) -> torch.Tensor:
        size = self.dataset.image_size
        paths = [self.paths[r][slot] for r in rows.tolist()]
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as e:
            raise batch_failure(paths, size, e) from None
        for path, img in zip(paths, images):
            if img.shape[1:] != (size, size):
                raise size_error(path, img.shape[1], img.shape[2], size)
        return torch.stack(images)
