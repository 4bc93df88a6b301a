"""A stand-in for the torch.cuda calls mmtm/training/cuda_graphs.py makes, for CPU tests of its capture bookkeeping.

It keeps what CUDA keeps: a current device, and per device a current stream; work for device d goes to d's current
stream, which runs it, or, while it captures, records it into the graph. `torch.cuda.set_stream` (and so
`torch.cuda.stream(s)`) makes s's device the current one, as torch does. A graph's `capture_end` warns with torch's
words when it captured nothing, and when told to fail raises after ending the capture but before it stops routing
allocations to the capture's pool, as torch leaves it. Memory pools are tracked from `graph_pool_handle` to
release. `StandInCuda.install(monkeypatch)` puts it in place of torch.cuda's calls for one test.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter

import torch

EMPTY_GRAPH_WARNING = ("The CUDA Graph is empty. This usually means that the graph was attempted to be captured on "
                       "wrong device or stream.")


class Stream:
    def __init__(self, device: torch.device):
        self.device = device
        self.capturing: Graph | None = None

    def wait_stream(self, other: "Stream") -> None:
        pass


class Graph:
    def __init__(self, cuda: "StandInCuda"):
        self.cuda, self.kernels, self.pool, self.stream, self.ended = cuda, 0, None, None, False

    def capture_begin(self, pool=None, capture_error_mode="global", **kwargs):
        self.stream, self.pool = self.cuda.current_stream(), pool
        self.stream.capturing = self
        self.cuda.pools[pool] = "capturing"

    def capture_end(self):
        stream = self.cuda.current_stream()
        if stream is not self.stream:
            raise RuntimeError("Capture must end on the same stream it began on.")
        stream.capturing = None
        if self.cuda.fail_capture:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing (stand-in)")
        self.cuda.pools[self.pool], self.ended = "held by its graph", True
        if self.kernels == 0:
            warnings.warn(EMPTY_GRAPH_WARNING)

    def replay(self):
        self.cuda.ran[self.stream.device.index] += self.kernels

    def reset(self):
        if self.ended:
            self.cuda.pools[self.pool], self.ended = "released", False

    __del__ = reset  # as a CUDAGraph's destructor does


class StandInCuda:
    def __init__(self, devices: int = 2):
        self.device_index = 0
        self.default = {d: Stream(torch.device("cuda", d)) for d in range(devices)}
        self.current = dict(self.default)
        self.ran: Counter[int] = Counter()  # kernels run per device, eager or replayed
        self.pools: dict[tuple[int, int], str] = {}
        self.fail_capture = False

    def launch(self, device_index: int) -> None:
        """One kernel for device `device_index`: on that device's current stream."""
        stream = self.current[device_index]
        if stream.capturing is not None:
            stream.capturing.kernels += 1
        else:
            self.ran[device_index] += 1

    def current_stream(self, device=None) -> Stream:
        return self.current[self.device_index if device is None else torch.device(device).index]

    def set_stream(self, stream: Stream) -> None:
        self.device_index = stream.device.index
        self.current[stream.device.index] = stream

    @contextlib.contextmanager
    def stream(self, stream: Stream):
        before_device, before = self.device_index, self.current_stream()
        if stream.device.index != before_device:
            other = self.current_stream(stream.device)
        self.set_stream(stream)
        try:
            yield
        finally:
            if stream.device.index != before_device:
                self.set_stream(other)
            self.set_stream(before)

    @contextlib.contextmanager
    def device(self, device):
        before = self.device_index
        self.device_index = torch.device(device).index
        try:
            yield
        finally:
            self.device_index = before

    def make_stream(self, device=None, priority=0) -> Stream:
        return Stream(torch.device("cuda", self.device_index) if device is None else torch.device(device))

    def graph_pool_handle(self) -> tuple[int, int]:
        handle = (0, len(self.pools) + 1)
        self.pools[handle] = "reserved"
        return handle

    def end_allocate_to_pool(self, device: int, pool) -> None:
        if self.pools.get(pool) != "capturing":
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.pools[pool] = "reserved"

    def release_pool(self, device: int, pool) -> None:
        if self.pools.get(pool) not in ("reserved", "held by its graph"):
            raise RuntimeError("releasePool: no such pool")
        self.pools[pool] = "released"

    def install(self, monkeypatch) -> "StandInCuda":
        for name, value in (("Stream", self.make_stream), ("stream", self.stream), ("device", self.device),
                            ("current_stream", self.current_stream), ("set_stream", self.set_stream),
                            ("CUDAGraph", lambda keep_graph=False: Graph(self)),
                            ("graph_pool_handle", self.graph_pool_handle), ("synchronize", lambda device=None: None),
                            ("current_device", lambda: self.device_index), ("empty_cache", lambda: None)):
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(torch.cuda.memory, "_cuda_endAllocateToPool", self.end_allocate_to_pool)
        monkeypatch.setattr(torch.cuda.memory, "_cuda_releasePool", self.release_pool)
        return self
