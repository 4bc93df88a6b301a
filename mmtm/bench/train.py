"""Training throughput: end to end through the loader vs. compute only on a batch already on the device, for each
batch size asked for, with eager steps and (on CUDA) CUDA-graph steps side by side.

The data-wait share is the time the loop spends inside `next(loader)` over the whole step time. On CUDA the GPU
busy time per step is the sum of the kernels' device time over a few profiled compute-only steps: far below the
step's wall time, the step is bound by the host."""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch

from loaders.dataset import open_dataset
from loaders.device import resolve_device
from loaders.errors import UserError
from loaders.factory import two_view_loader
from mmtm.config import resolve
from mmtm.fusion import REGULAR
from mmtm.hardware import Distributed
from mmtm.training import build_trainer, train_step

PROFILED_STEPS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(trainer, batches, steps: int) -> tuple[float, float, int]:
    """Run `steps` regular steps pulling batches from the iterator; return (seconds, wait seconds, samples)."""
    wait = 0.0
    samples = 0
    _sync(trainer.compute.device)
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        train_step(trainer, batch, REGULAR)
        samples += batch.label.numel()
    _sync(trainer.compute.device)
    return time.perf_counter() - start, wait, samples


def _gpu_busy_ms(trainer, batch) -> float:
    """Device time of every kernel of a compute-only step, averaged over PROFILED_STEPS steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            train_step(trainer, batch, REGULAR)
        _sync(trainer.compute.device)
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
    real = _cycle(data_loader)
    first = next(real)
    # Compute-only ceiling: one batch already on the device, reused every step.
    cached = SimpleNamespace(view0=first.view0.clone(), view1=first.view1.clone(), label=first.label.clone())
    fake = iter(lambda: cached, None)
    e2e, compute, waits, step_s = [], [], [], []
    _timed_steps(trainer, real, warmup)  # graph mode captures here (after its eager warm-up runs)
    _timed_steps(trainer, fake, warmup)
    for _ in range(repeats):
        sec, wait, n = _timed_steps(trainer, real, steps)
        e2e.append(n / sec)
        waits.append(wait / sec)
        sec, _, n = _timed_steps(trainer, fake, steps)
        compute.append(n / sec)
        step_s.append(steps / sec)
    e2e_med, compute_med = statistics.median(e2e), statistics.median(compute)
    return {"batch_size": cfg.batch_size, "cuda_graphs": trainer.graphs is not None, "loader": data_loader.backend,
            "end_to_end_samples_per_s": e2e_med, "compute_only_samples_per_s": compute_med,
            "end_to_end_over_compute": e2e_med / compute_med, "data_wait_share": statistics.median(waits),
            "compute_steps_per_s": statistics.median(step_s),
            "gpu_busy_ms_per_step": _gpu_busy_ms(trainer, cached) if dev.type == "cuda" else None,
            "amp": trainer.compute.amp, "channels_last": trainer.compute.channels_last}


def bench_train(data: str, *, preset: str = "demo", batch_sizes: list[int] | None = None, width: int | None = None,
                steps: int = 20, warmup: int = 3, repeats: int = 3, device: str = "auto", loader: str = "auto",
                threads: int = 2, channels_last: str = "auto") -> dict:
    """{"results": [one entry per (batch size, eager|graph)], "config": {...}}; graph entries on CUDA only."""
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
