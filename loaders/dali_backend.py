"""The DALI backend: one source hands DALI both views of the same objects; DALI decodes and augments.

Pairing is by construction: a single batch-mode external source returns, for batch k of this
rank's epoch order, one DALI batch of 2N samples, view0 of rows r_0..r_N-1 then view1 of the
same rows, with their row indices and flip decisions. DALI keeps sample order, so output sample
j and N+j are the two views of one object, and view0/view1 are the two halves of one tensor.
One 2N-sample decode beats two N-sample decodes (measured 10-20% less CPU at 224 px: one
operator launch and one load-balanced pass over the thread pool instead of two).
The source runs in the consumer's thread rather than DALI's parallel Python workers: reading a
batch's files is ~5% of the CPU time at 224 px (~20% at 64 px), and the epoch order can change
with set_epoch, which worker processes would not see.
On a GPU the decode is "mixed" (nvJPEG) and flip+normalise run on the GPU, and the outputs reach
torch through DLPack without a host copy; without a GPU the same graph runs on CPU operators.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Generator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from loaders.dataset import DatasetError
from loaders.files import batch_failure, read_intact, size_error
from loaders.two_view import MEAN, STD, Batch, TwoViewLoader

# Batches DALI works on ahead of the consumer; 2 measured as fast as deeper queues on 2 cores.
PREFETCH_DEPTH = 2


class _PairSource:
    """External-source callback: batch k of the epoch -> both views of the same rows, in one batch.

    It keeps no reference to the loader (no cycle), so dropping the loader frees the pipeline."""

    def __init__(self, paths: list[tuple[str, str]], size: int):
        self.paths = paths
        self.size = size
        self.batches: list[np.ndarray] = []
        self.flips = np.zeros((0, 2), dtype=bool)
        self.stop = False
        self.in_flight: deque[np.ndarray] = deque()  # rows fed to DALI and not yet returned

    def start(self, batches: list[np.ndarray], flips: np.ndarray) -> None:
        self.batches, self.flips, self.stop = batches, flips, False
        self.in_flight.clear()

    def __call__(self, info) -> tuple:
        if self.stop or info.iteration >= len(self.batches):
            raise StopIteration
        rows = self.batches[info.iteration]
        self.in_flight.append(rows)
        encoded = [read_intact(self.paths[r][slot], self.size) for slot in (0, 1) for r in rows]
        mirror = np.ascontiguousarray(self.flips[rows].T.reshape(-1).astype(np.int32))
        return encoded, np.concatenate([rows, rows]), mirror


class DaliTwoViewLoader(TwoViewLoader):
    backend = "dali"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._gpu = self.device.type == "cuda"
        self._labels = torch.from_numpy(self.labels).to(self.device)
        self._source = _PairSource(self.paths, self.dataset.image_size)
        self._pipe: Pipeline | None = self._build()

    def _build(self) -> Pipeline:
        pipe = Pipeline(batch_size=2 * self.batch_size, num_threads=self.num_threads,
                        device_id=self.device.index if self._gpu else None,
                        prefetch_queue_depth=PREFETCH_DEPTH, exec_dynamic=True)
        with pipe:
            encoded, index, mirror = fn.external_source(self._source, num_outputs=3, batch=True, batch_info=True)
            # output_type RGB also expands grey images to three channels.
            images = fn.decoders.image(encoded, device="mixed" if self._gpu else "cpu", output_type=types.RGB)
            pipe.set_outputs(fn.crop_mirror_normalize(images, mirror=mirror, mean=list(MEAN), std=list(STD),
                                                      dtype=types.FLOAT, output_layout="CHW"), index)
        pipe.build()
        return pipe

    def _iterate(self, batches: list[np.ndarray], flips: np.ndarray) -> Generator[Batch, None, None]:
        if not batches:
            return
        if self._pipe is None:  # a failed epoch invalidated the previous pipeline
            self._pipe = self._build()
        self._source.start(batches, flips)
        try:
            for _ in batches:
                yield self._next_batch()
        finally:
            self._end_epoch()

    def _next_batch(self) -> Batch:
        assert self._pipe is not None
        stream = torch.cuda.current_stream(self.device) if self._gpu else None
        try:
            images, index = self._pipe.run(stream)
        except DatasetError:  # from the source: a file is missing
            self._pipe = None
            raise
        except RuntimeError as e:  # a decode failure; DALI only names "sample #k", so find the file
            self._pipe = None
            suspects = [p for rows in self._source.in_flight for r in rows for p in self.paths[r]]
            raise batch_failure(suspects, self.dataset.image_size, e) from None
        rows = self._source.in_flight.popleft()
        self._check_sizes(images, rows)
        n = len(rows)
        both = self._to_torch(images)
        index_t = torch.from_dlpack(index.as_tensor())[:n].to(self.device, non_blocking=True)
        return Batch(both[:n], both[n:], self._labels[index_t], index_t)

    def _check_sizes(self, images, rows: np.ndarray) -> None:
        """A file of another size would make a ragged batch; name it instead."""
        size = self.dataset.image_size
        for j, shape in enumerate(images.shape()):
            if tuple(shape) != (3, size, size):
                slot, k = divmod(j, len(rows))
                raise size_error(self.paths[rows[k]][slot], shape[1], shape[2], size)

    def _to_torch(self, images) -> torch.Tensor:
        # DLPack shares DALI's buffer; with exec_dynamic each output owns fresh memory, so no copy.
        if self._gpu:
            with torch.cuda.device(self.device):
                return torch.from_dlpack(images.as_tensor())
        return torch.from_dlpack(images.as_tensor())

    def _end_epoch(self) -> None:
        """Consume what DALI prefetched beyond the last batch taken, so the next epoch starts clean."""
        if self._pipe is None:
            return
        self._source.stop = True
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except Exception:  # a bad file in a batch nobody will read: rebuild rather than report
            self._pipe = None
