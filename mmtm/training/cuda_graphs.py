"""CUDA-graph training steps: on a GPU, a step of the two-branch network launches ~900 small kernels and the
host, not the GPU, sets the pace (measured on an H200: 28 ms of wall time per batch-8 step for 8.7 ms of GPU
work). Each step mode (regular, re-balance m0, re-balance m1) is captured once as a CUDA graph — forward, loss,
backward, the CLS meter, the running gate means, the SGD update and the step's readout — over static input
buffers, and replayed: one launch per step. The host then copies the batch in and reads the readout out, the
step's one sync.

What this needs from the step (mmtm/training/loop.py `step_on_device`): nothing may leave the device (no .item(),
no host tensors), its shapes are fixed (training drops the last partial batch; a batch of another shape or
dtype is refused, never broadcast), every tensor it updates exists before capture and is only ever updated in
place (the learning rate is a device tensor the schedules fill in place, the optimizer's momentum buffers are
made before the first step, loading a checkpoint copies into them: `mmtm.training.loop.Trainer.load_state_dict`),
and autocast runs without its cache.

How capture is kept safe from the rest of the process: every CUDA object is made on the run's device (the side
stream with `device=`, the step and the capture under `torch.cuda.device`): a side stream of another device would
make the current device that one, the step's work would run eagerly on its own device's stream and the graph would
capture nothing. A mode is captured after WARMUP eager runs of that mode (real training steps), made on the same side
stream the capture then uses, so that lazy set-up such as cuBLAS workspaces happens before capture; the capture runs
in `thread_local` error mode, so CUDA calls of the loader's threads (DALI's decoders, the torch twin's pin-memory
thread) neither break it nor are refused; the previous batch is held until the capture has ended, so freeing it
cannot wake a thread that synchronises the device mid-capture (the DALI loader hands out torch-owned copies, never
DLPack views of DALI's buffers). Each capture has a memory pool of its own.

A capture that fails — it raises, or it captured nothing (torch only warns of an empty graph, whose every replay
would train nothing) — leaves nothing behind: the current stream is the one before, its pool is released (torch
leaves it reserved when `capture_end` raises), and CUDA graphs are off for the rest of the run, every mode eager,
with one `note:` line saying why; `off` keeps the reason and `replays`/`eager_runs` count what ran how (the training
loop writes them to epochs.csv, `mmtm bench train` to its JSON). A run never dies of a capture. DDP runs and
policies with step hooks of their own (`mmtm.training.policy.runs_in_cuda_graphs`) stay eager.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

WARMUP = 3  # eager runs of a mode before it is captured

Step = Callable[[Tensor, Tensor, Tensor, str], Tensor]  # (view0, view1, label, mode) -> readout on the device


class GraphedSteps:
    def __init__(self, step: Step, device: torch.device, warmup: int = WARMUP):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.step, self.device, self.warmup = step, device, warmup
        self.eager_runs: Counter[str] = Counter()  # eager steps per mode: the warm-up, and all once graphs are off
        self.replays: Counter[str] = Counter()     # graph replays per mode
        self.graphs: dict[str, tuple[object, Tensor]] = {}
        self.off: str | None = None  # why CUDA graphs are off for the rest of the run (a failed capture)
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self._held: tuple[Tensor, ...] = ()  # the previous step's batch, alive until this step's capture ends
        self.stream = self._side_stream()

    def __call__(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        """One training step in `mode`; returns the step's readout (a device tensor, read it before the next call)."""
        batch = (view0, view1, label)
        try:
            if self.off is None and (mode in self.graphs or self.eager_runs[mode] >= self.warmup):
                self._fill_inputs(batch)
                if mode in self.graphs or self._capture(mode):
                    graph, readout = self.graphs[mode]
                    graph.replay()
                    self.replays[mode] += 1
                    return readout
            self.eager_runs[mode] += 1
            return self._eager(*batch, mode)
        finally:
            self._held = batch

    def _fill_inputs(self, batch: tuple[Tensor, Tensor, Tensor]) -> None:
        if self.inputs is None:
            self.inputs = tuple(torch.empty_like(x) for x in batch)  # type: ignore[assignment]
        for name, static, x in zip(("view0", "view1", "label"), self.inputs, batch):
            if x.shape != static.shape or x.dtype != static.dtype or x.device != static.device:
                raise ValueError(f"a graphed training step got {name} {tuple(x.shape)} {x.dtype} on {x.device}; its "
                                 f"graphs were captured for {tuple(static.shape)} {static.dtype} on {static.device}")
            static.copy_(x, non_blocking=True)

    def _capture(self, mode: str) -> bool:
        """Capture `mode`'s graph; if that fails, CUDA graphs are off for the rest of the run (one note)."""
        try:
            self.graphs[mode] = self._record(mode)
            return True
        except Exception as e:  # noqa: BLE001 - whatever broke the capture, the eager step still works
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            self.off = f"capture of {mode} steps failed ({reason})"
            self.graphs.clear()  # the modes captured before run eager too; their pools go with their graphs
            print(f"note: CUDA graphs off for the rest of the run: {self.off}; every step runs eager",
                  file=sys.stderr)
            return False

    # The device-specific parts: the CPU twin in tests/lockstep.py overrides the first three, and
    # tests/cuda_standin.py stands in for the torch.cuda calls they make.
    def _side_stream(self):
        return torch.cuda.Stream(device=self.device)

    def _eager(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        with torch.cuda.device(self.device):
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                readout = self.step(view0, view1, label, mode)
            torch.cuda.current_stream().wait_stream(self.stream)
        return readout

    def _record(self, mode: str) -> tuple[object, Tensor]:
        """Record the step over the static inputs on the warm-up stream, into a pool of its own (recording runs
        nothing: the caller replays). The device is synchronised first, so the inputs copied in are there. On
        failure the stream context has restored the current stream, and the pool is released here."""
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
        ended = False
        with torch.cuda.device(self.device):
            torch.cuda.synchronize(self.device)
            try:
                with torch.cuda.stream(self.stream):
                    graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                    try:
                        readout = self.step(*self.inputs, mode)
                    finally:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            graph.capture_end()
                        ended = True
                for w in caught:
                    if "graph is empty" in str(w.message).lower():
                        raise RuntimeError("the captured graph is empty: the step's work ran on another device "
                                           "or stream")
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            except BaseException:
                if ended:
                    graph.reset()  # a graph that ended its capture releases its pool itself
                else:
                    self._release_pool(pool)
                raise
        return graph, readout

    def _release_pool(self, pool) -> None:
        """What torch leaves undone when a capture ends in an error: the pool still taking this thread's
        allocations, and its memory reserved."""
        for release in (torch.cuda.memory._cuda_endAllocateToPool, torch.cuda.memory._cuda_releasePool):
            try:
                release(self.device.index, pool)
            except RuntimeError:  # torch got that far itself
                pass
