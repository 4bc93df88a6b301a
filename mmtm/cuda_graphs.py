"""CUDA-graph training steps: on a GPU, a step of the two-branch network launches ~900 small kernels and the
host, not the GPU, sets the pace (measured on an H200: 28 ms of wall time per batch-8 step for 8.7 ms of GPU
work). Each step mode (regular, re-balance m0, re-balance m1) is captured once as a CUDA graph — forward, loss,
backward, the CLS meter, the running gate means, the SGD update and the step's readout — over static input
buffers, and replayed: one launch per step. The host then copies the batch in and reads the readout out, the
step's one sync.

What this needs from the step (mmtm/training.py `step_on_device`): nothing may leave the device (no .item(),
no host tensors), its shapes are fixed (training drops the last partial batch), its learning rate is a device
tensor the plateau schedule fills in place (fused SGD reads it at replay), and autocast runs without its cache.
A mode is captured after WARMUP eager runs of that mode, made on a side stream as PyTorch asks; those runs are
real training steps. Multi-process (DDP) runs and policies with hooks of their own (mmtm/methods/) stay eager.
"""
from __future__ import annotations

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
        self.graphs: dict[str, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None

    def __call__(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        """One training step in `mode`; returns the step's readout (a device tensor, read it before the next call)."""
        if mode not in self.graphs and self.eager_runs[mode] < self.warmup:
            self.eager_runs[mode] += 1
            return self._eager(view0, view1, label, mode)
        if self.inputs is None:
            self.inputs = (torch.empty_like(view0), torch.empty_like(view1), torch.empty_like(label))
        for static, x in zip(self.inputs, (view0, view1, label)):
            static.copy_(x, non_blocking=True)
        if mode not in self.graphs:
            self.graphs[mode] = self._capture(mode)
        graph, readout = self.graphs[mode]
        graph.replay()
        return readout

    def _eager(self, view0: Tensor, view1: Tensor, label: Tensor, mode: str) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            readout = self.step(view0, view1, label, mode)
        torch.cuda.current_stream().wait_stream(side)
        return readout

    def _capture(self, mode: str) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Record the step over the static inputs (recording runs nothing: the caller replays it)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            readout = self.step(*self.inputs, mode)
        return graph, readout
