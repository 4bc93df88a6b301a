"""The DALI backend: one source hands DALI both views of the same objects; DALI decodes and augments.

Pairing is by construction: a single batch-mode external source (loaders/pair_source.py) returns, for batch k
of this rank's epoch order, one DALI batch of 2N samples, view0 of rows r_0..r_N-1 then view1 of the same rows,
with their flip decisions. DALI keeps sample order, so output sample j and N+j are the two views
of one object, and view0/view1 are the two halves of one tensor. One 2N-sample decode beats two N-sample decodes
(measured 10-20% less CPU at 224 px: one operator launch and one load-balanced pass over the thread pool).

Where the source runs: with `source_workers=0` in the consumer's thread, inside `pipe.run` (on a 2-core CPU
reading is ~5% of the CPU time at 224 px and worker processes would only compete for the cores); with N > 0 in
N spawned DALI worker processes, so that no file reading or per-sample Python work happens on the thread that
drives the GPU. The source is a pure function of (epoch, iteration), so both give the same batches; a pipeline
counts epochs from its build, and an epoch other than the next one (set_epoch, or an epoch left early while
workers prefetch) rebuilds it.
On a GPU the decode is "mixed" (nvJPEG) and flip+normalise run on the GPU, and the outputs are copied, device to
device, into torch's memory on torch's stream; without a GPU the same graph runs on CPU operators and the outputs
reach torch through DLPack without a copy.
"""
from __future__ import annotations

import ctypes
from collections.abc import Generator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from mmtm.loaders.dataset import DatasetError
from mmtm.loaders.files import batch_failure, size_error
from mmtm.loaders.pair_source import PairSource
from mmtm.loaders.two_view import MEAN, STD, Batch, TwoViewLoader

# Batches DALI works on ahead of the consumer: 2 measured as fast as deeper queues on 2 cores; on a GPU one more
# absorbs the jitter of file reads behind a short CUDA-graph step (not yet measured there).
PREFETCH_DEPTH = {"cpu": 2, "cuda": 3}


class DaliTwoViewLoader(TwoViewLoader):
    backend = "dali"

    def __init__(self, *args, source_workers: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._gpu = self.device.type == "cuda"
        self._labels = torch.from_numpy(self.labels).to(self.device)
        self._workers = source_workers
        self._depth = PREFETCH_DEPTH[self.device.type]
        self._pipe: Pipeline | None = None
        self._source: PairSource | None = None
        self._next_epoch = 0  # the epoch the pipeline produces next
        self._build(0)  # a broken DALI set-up shows at construction, not at the first epoch

    def _build(self, first_epoch: int) -> None:
        self._pipe = None  # release the previous pipeline (and its workers) first
        self._source = PairSource(self.paths, image_size=self.dataset.image_size, batch_size=self.batch_size,
                                  train=self.train, seed=self.seed, rank=self.rank, world_size=self.world_size,
                                  first_epoch=first_epoch, flip=self.flip)
        parallel = self._workers > 0
        pipe = Pipeline(batch_size=2 * self.batch_size, num_threads=self.num_threads,
                        device_id=self.device.index if self._gpu else None, prefetch_queue_depth=self._depth,
                        exec_dynamic=True, **({"py_num_workers": self._workers, "py_start_method": "spawn"}
                                              if parallel else {}))
        with pipe:
            encoded, mirror = fn.external_source(self._source, num_outputs=2, batch=True, batch_info=True,
                                                        parallel=parallel,
                                                        **({"prefetch_queue_depth": self._depth} if parallel else {}))
            # output_type RGB also expands grey images to three channels.
            images = fn.decoders.image(encoded, device="mixed" if self._gpu else "cpu", output_type=types.RGB)
            pipe.set_outputs(fn.crop_mirror_normalize(images, mirror=mirror, mean=list(MEAN), std=list(STD),
                                                      dtype=types.FLOAT, output_layout="CHW"))
        pipe.build()
        self._pipe, self._next_epoch = pipe, first_epoch

    def _iterate(self, epoch: int, batches: list[np.ndarray], flips: np.ndarray) -> Generator[Batch, None, None]:
        if not batches:
            return
        if self._pipe is None or epoch != self._next_epoch:
            self._build(epoch)
        taken = 0  # batches handed out: a loop that stops asking after the last one has completed the epoch
        try:
            for k in range(len(batches)):
                batch = self._next_batch(batches, k)
                taken += 1
                yield batch
        finally:
            self._end_epoch(complete=taken == len(batches))

    def _next_batch(self, batches: list[np.ndarray], k: int) -> Batch:
        assert self._pipe is not None
        stream = torch.cuda.current_stream(self.device) if self._gpu else None
        try:
            (images,) = self._pipe.run(stream)
        except DatasetError:  # from a consumer-thread source: it names the file
            self._pipe = None
            raise
        except Exception as e:  # a file went missing or does not decode; DALI only names "sample #k"
            self._pipe = None
            suspects = [p for rows in batches[k:k + self._depth + 1] for r in rows for p in self.paths[r]]
            raise batch_failure(suspects, self.dataset.image_size, e) from None
        rows = batches[k]
        self._check_sizes(images, rows)
        n = len(rows)
        both = self._to_torch(images)
        # Rows and labels come from the plan this loader owns (DALI keeps sample order), not from a DALI host
        # buffer that is released once the next batch runs.
        index = torch.as_tensor(rows, dtype=torch.int64).to(self.device, non_blocking=True)
        return Batch(both[:n], both[n:], self._labels[index], index)

    def _check_sizes(self, images, rows: np.ndarray) -> None:
        """A file of another size would make a ragged batch; name it instead."""
        size = self.dataset.image_size
        for j, shape in enumerate(images.shape()):
            if tuple(shape) != (3, size, size):
                slot, k = divmod(j, len(rows))
                raise size_error(self.paths[rows[k]][slot], shape[1], shape[2], size)

    def _to_torch(self, images) -> torch.Tensor:
        """On a GPU, a copy into torch's memory on torch's current stream (as DALI's own torch iterator makes it):
        the training step, and the CUDA-graph capture around it, then never hold a DLPack view of DALI's buffer,
        whose release goes through a DALI thread that synchronises the device. On the CPU, DLPack shares DALI's
        buffer (with exec_dynamic each output owns fresh memory) and nothing is copied."""
        if not self._gpu:
            return torch.from_dlpack(images.as_tensor())
        out = torch.empty((len(images), *images.shape()[0]), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        images.copy_to_external(ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(stream.cuda_stream),
                                non_blocking=True)
        return out

    def _end_epoch(self, complete: bool) -> None:
        """Let the pipeline reach the end of the epoch and reset it, so the next epoch starts clean. Left early,
        a consumer-thread source is told to stop and what DALI prefetched is drained; worker processes cannot be
        told, so their pipeline is dropped and the next epoch builds a new one."""
        if self._pipe is None:
            return
        if not complete and self._workers > 0:
            self._pipe = None
            return
        assert self._source is not None
        self._source.stop = not complete
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
            self._source.stop = False
            self._next_epoch += 1
        except Exception:  # a bad file in a batch nobody will read: rebuild rather than report
            self._pipe = None
