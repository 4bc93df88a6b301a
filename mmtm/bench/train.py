"""Training throughput: end to end through the loader vs. compute only on a batch already on the device, for each
batch size asked for, with eager steps and (on CUDA) CUDA-graph steps side by side.

Steps are timed as the training loop takes them (`mmtm.training.loop.train_one_epoch`): launch a step, ask the loader
for the next batch while the device runs it, then read the step's values (its one host sync). The data-wait share
is the time spent inside `next(loader)` over the whole step time. Each entry says which step modes ran as graph
replays and which eager (`graph_replays`, `eager_steps`, and `capture_failed` when a failed capture turned graphs
off). On CUDA the GPU busy time per step is the sum of the kernels' device time over a few profiled compute-only
steps: far below the step's wall time, the step is bound by the host; and the host syncs per step are counted
over a few end-to-end steps (the target is one: the read of the step's values)."""
from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from types import SimpleNamespace

import torch

from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.device import resolve_device
from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import two_view_loader
from mmtm.training.config import resolve
from mmtm.science.fusion import REGULAR
from mmtm.training.hardware import Distributed
from mmtm.training.loop import build_trainer, launch_step, read_step

PROFILED_STEPS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Steps:
    """Regular training steps from a batch iterator, as the training loop takes them; `batch` is the one in hand."""

    def __init__(self, trainer, batches):
        self.trainer, self.batches = trainer, batches
        self.batch = next(batches)
        self.eager = Counter()  # steps of a trainer without graphs

    def run(self, steps: int, sync: bool = True) -> tuple[float, float, int]:
        """`steps` steps; (seconds, seconds waiting for the loader, samples). `sync`: wait for the device before
        and after, so the seconds are the steps'."""
        t = self.trainer
        wait = 0.0
        samples = 0
        if sync:
            _sync(t.compute.device)
        start = time.perf_counter()
        for _ in range(steps):
            readout = launch_step(t, self.batch, REGULAR)
            samples += self.batch.label.numel()
            t0 = time.perf_counter()
            self.batch = next(self.batches)
            wait += time.perf_counter() - t0
            read_step(t, readout, REGULAR)
            if t.graphs is None:
                self.eager[REGULAR] += 1
        if sync:
            _sync(t.compute.device)
        return time.perf_counter() - start, wait, samples


def _host_syncs_per_step(steps: _Steps, n: int = 5) -> float:
    """How often a step of the loop, the loader's next batch included, makes the host wait for the GPU (torch's sync
    debug mode warns once per sync)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            steps.run(n, sync=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught) / n


def _gpu_busy_ms(steps: _Steps) -> float:
    """Device time of every kernel of a compute-only step, averaged over PROFILED_STEPS steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        steps.run(PROFILED_STEPS)
    busy_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return busy_us / 1000 / PROFILED_STEPS


def _cycle(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _measure(cfg, classes: int, dev: torch.device, threads: int, steps: int, warmup: int, repeats: int) -> dict:
    trainer = build_trainer(cfg, classes, dev, Distributed())
    trainer.net.train()
    data_loader = two_view_loader(cfg.data, "train", views=cfg.views, batch_size=cfg.batch_size, train=True,
                                  seed=cfg.seed, backend=cfg.loader, device=dev, num_threads=threads)
    real = _Steps(trainer, _cycle(data_loader))
    # Compute-only ceiling: one batch already on the device, reused every step.
    first = real.batch
    cached = SimpleNamespace(view0=first.view0.clone(), view1=first.view1.clone(), label=first.label.clone())
    fake = _Steps(trainer, iter(lambda: cached, None))
    e2e, compute, waits, step_s = [], [], [], []
    real.run(warmup)  # graph mode captures here (after its eager warm-up runs)
    fake.run(warmup)
    for _ in range(repeats):
        sec, wait, n = real.run(steps)
        e2e.append(n / sec)
        waits.append(wait / sec)
        sec, _, n = fake.run(steps)
        compute.append(n / sec)
        step_s.append(steps / sec)
    e2e_med, compute_med = statistics.median(e2e), statistics.median(compute)
    busy = _gpu_busy_ms(fake) if dev.type == "cuda" else None
    syncs = _host_syncs_per_step(real) if dev.type == "cuda" else None
    graphs = trainer.graphs
    return {"batch_size": cfg.batch_size, "cuda_graphs": graphs is not None, "loader": data_loader.backend,
            "end_to_end_samples_per_s": e2e_med, "compute_only_samples_per_s": compute_med,
            "end_to_end_over_compute": e2e_med / compute_med, "data_wait_share": statistics.median(waits),
            "compute_steps_per_s": statistics.median(step_s), "gpu_busy_ms_per_step": busy,
            "host_syncs_per_step": syncs,
            "graph_replays": dict(graphs.replays) if graphs else {},
            "eager_steps": dict(graphs.eager_runs) if graphs else dict(real.eager + fake.eager),
            "capture_failed": graphs.off if graphs else None,
            "amp": trainer.compute.amp, "channels_last": trainer.compute.channels_last}


def bench_train(data: str, *, preset: str = "demo", batch_sizes: list[int] | None = None, width: int | None = None,
                steps: int = 20, warmup: int = 3, repeats: int = 3, device: str = "auto", loader: str = "auto",
                threads: int = 2, channels_last: str = "auto") -> dict:
    """{"results": [one entry per (batch size, eager|graph)], "config": {...}}; graph entries on CUDA only. An entry
    with `cuda_graphs` true whose `capture_failed` is set timed eager steps after the failure, and says so."""
    if steps < 1 or warmup < 0 or repeats < 1:
        raise UserError("--steps and repeats must be at least 1, warm-up steps at least 0")
    dev = resolve_device(device)
    ds = open_dataset(data)
    results = []
    for batch_size in batch_sizes or [None]:
        for graphs in (("off", "auto") if dev.type == "cuda" else ("off",)):
            cfg = resolve(preset, data=data, out="", batch_size=batch_size, width=width, device=device, loader=loader,
                          num_threads=threads, channels_last=channels_last, cuda_graphs=graphs)
            results.append(_measure(cfg, len(ds.classes), dev, threads, steps, warmup, repeats))
    return {"results": results,
            "config": {"data": data, "preset": preset, "width": cfg.width, "image_size": ds.image_size,
                       "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                       "threads": threads, "steps": steps, "repeats": repeats, "torch": torch.__version__,
                       "cpu_threads": torch.get_num_threads()}}
