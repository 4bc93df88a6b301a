"""Training throughput: end to end through the loader vs. compute only on tensors already on the device.

The data-wait share is the time the loop spends inside `next(loader)` over the whole step time."""
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


def _cycle(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_train(data: str, *, preset: str = "demo", batch_size: int | None = None, width: int | None = None,
                steps: int = 20, warmup: int = 3, repeats: int = 3, device: str = "auto", loader: str = "auto",
                threads: int = 2, channels_last: str = "auto") -> dict:
    if steps < 1 or repeats < 1 or warmup < 0:
        raise UserError(f"--steps and repeats must be at least 1 and warm-up steps at least 0 "
                        f"(got {steps}, {repeats}, {warmup})")
    dev = resolve_device(device)
    cfg = resolve(preset, data=data, out="", batch_size=batch_size, width=width, device=device, loader=loader,
                  num_threads=threads, channels_last=channels_last)
    ds = open_dataset(data)
    trainer = build_trainer(cfg, len(ds.classes), dev, Distributed())
    trainer.net.train()
    data_loader = two_view_loader(data, "train", views=cfg.views, batch_size=cfg.batch_size, train=True,
                                  seed=cfg.seed, backend=cfg.loader, device=dev, num_threads=threads)
    real = _cycle(data_loader)
    first = next(real)
    # Compute-only ceiling: one batch already on the device, reused every step.
    cached = SimpleNamespace(view0=first.view0.clone(), view1=first.view1.clone(), label=first.label.clone())
    fake = iter(lambda: cached, None)

    e2e, compute, waits = [], [], []
    _timed_steps(trainer, real, warmup)
    _timed_steps(trainer, fake, warmup)
    for _ in range(repeats):
        sec, wait, n = _timed_steps(trainer, real, steps)
        e2e.append(n / sec)
        waits.append(wait / sec)
        sec, _, n = _timed_steps(trainer, fake, steps)
        compute.append(n / sec)
    e2e_med, compute_med = statistics.median(e2e), statistics.median(compute)
    return {
        "results": {
            "end_to_end_samples_per_s": e2e_med,
            "compute_only_samples_per_s": compute_med,
            "end_to_end_over_compute": e2e_med / compute_med,
            "data_wait_share": statistics.median(waits),
        },
        "config": {"data": data, "preset": preset, "batch_size": cfg.batch_size, "width": cfg.width,
                   "image_size": ds.image_size, "device": str(dev), "loader": data_loader.backend,
                   "threads": threads, "steps": steps, "repeats": repeats, "amp": trainer.compute.amp,
                   "channels_last": trainer.compute.channels_last, "torch": torch.__version__,
                   "cpu_threads": torch.get_num_threads()},
    }
