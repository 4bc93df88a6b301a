"""CUDA-graph training steps: on a GPU, a step of the two-branch network launches ~900 small kernels and the
host, not the GPU, sets the pace (measured on an H200: 28 ms of wall time per batch-8 step for 8.7 ms of GPU
work). Each step mode (regular, re-balance m0, re-balance m1) is captured once as a CUDA graph — forward, loss,
backward, the CLS meter, the running gate means, the SGD update and the step's readout — over static input
buffers, and replayed: one launch per step. The host then copies the batch in and reads the readout out, the
step's one sync.

What this needs from the step (mmtm/training.py `step_on_device`): nothing may leave the device (no .item(),
no host tensors), its shapes are fixed (training drops the last partial batch; a batch of another shape or
dtype is refused, never broadcast), every tensor it updates exists before capture and is only ever updated in
place (the learning rate is a device tensor the schedules fill in place, the optimizer's momentum buffers are
made before the first step, loading a checkpoint copies into them: `mmtm.training.Trainer.load_state_dict`),
and autocast runs without its cache.

How capture is kept safe from the rest of the process: a mode is captured after WARMUP eager runs of that mode
(real training steps), made on the same side stream the capture then uses, so that lazy set-up such as cuBLAS
workspaces happens before capture; the capture runs in `thread_local` error mode, so CUDA calls of the loader's
threads (DALI's decoders and its buffer release, the torch twin's pin-memory thread) neither break it nor are
refused; the previous batch is held until the capture has ended, so freeing it cannot wake a thread that
synchronises the device mid-capture. If a capture still fails, that mode runs eager for the rest of the run and
one `note:` line says why: a run never dies of a capture. DDP runs and policies with step hooks of their own
(`mmtm.policy.runs_in_cuda_graphs`) stay eager.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

WARMUP = 3  # eager runs of a mode before it is captured

Step = Callable[[Tensor, Tensor, Tensor, str], Tensor]  # (view0, view1, label, mode) -> readout on the device


class GraphedSteps:
    def __init__(self, step: Step, warmup: int = WARMUP):
        self.step, self.warmup = step, warmup
        self.eager_runs: Counter[str] = Counter()
        self.graphs: dict[str, tuple[object, Tensor]] = {}
        self.eager_modes: set[str] = set()  # modes whose capture failed: eager from then on
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self._held: tuple[Tensor, ...] = ()  # the previous step's batch, alive until this step's capture ends
        self.stream = self._side_stream()

    def __call__(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        """One training step in `mode`; returns the step's readout (a device tensor, read it before the next call)."""
        batch = (view0, view1, label)
        try:
            if mode in self.eager_modes or (mode not in self.graphs and self.eager_runs[mode] < self.warmup):
                self.eager_runs[mode] += 1
                return self._eager(*batch, mode)
            self._fill_inputs(batch)
            if mode not in self.graphs:
                captured = self._capture(mode)
                if captured is None:
                    self.eager_modes.add(mode)
                    self.eager_runs[mode] += 1
                    return self._eager(*batch, mode)
                self.graphs[mode] = captured
            graph, readout = self.graphs[mode]
            graph.replay()
            return readout
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

    def _capture(self, mode: str) -> tuple[object, Tensor] | None:
        """The graph of `mode` and the readout tensor it writes, or None (with a note) if capture failed."""
        try:
            return self._record(mode)
        except Exception as e:  # noqa: BLE001 - whatever broke the capture, the eager step still works
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            print(f"note: CUDA graph capture of {mode} steps failed ({reason}); they run eager for the rest of the "
                  "run", file=sys.stderr)
            return None

    # The three device-specific parts; the CPU twin in tests/test_cuda_graphs.py overrides them.
    def _side_stream(self):
        return torch.cuda.Stream()

    def _eager(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            readout = self.step(view0, view1, label, mode)
        torch.cuda.current_stream().wait_stream(self.stream)
        return readout

    def _record(self, mode: str) -> tuple[object, Tensor]:
        """Record the step over the static inputs on the warm-up stream (recording runs nothing: the caller replays;
        torch.cuda.graph synchronises the device first, so the inputs copied in are there)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            readout = self.step(*self.inputs, mode)
        return graph, readout
