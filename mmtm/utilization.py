"""Conditional utilisation rate (SPEC §2): the mean squeeze vectors S̄ for flow_off, the CUR arithmetic, and
`evaluate_cur`, which runs the whole protocol on a run's checkpoint and writes RUN/cur.json.

Protocol: `collect_mean_squeeze(net, train_batches)` (training subset, eval transform), then per-head test
accuracies with mode normal (A(f0), A(f1)) and mode flow_off (A(f0'), A(f1')), then `cur_from_accuracies`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from loaders import two_view_loader
from mmtm import formulas
from mmtm.checkpoint import atomic_write_text, load_checkpoint
from mmtm.config import from_dict
from mmtm.engine import build_network, check_dataset_matches, resolve_device
from mmtm.evaluate import evaluate
from mmtm.fusion import FLOW_OFF, MMTM, NORMAL


def collect_mean_squeeze(net: nn.Module, batches: Iterable[Any], device: torch.device | str | None = None) -> int:
    """One eval-mode pass (mode normal) over batches with .view0/.view1; stores every MMTM's S̄_A, S̄_B, the mean
    over all samples. Returns the number of samples. Changes no other state: BN statistics and running gates do
    not move in eval mode, and every module's training flag is restored.

    Pass the plain network (not a torch.compile'd one): S̄ is captured by forward hooks on the MMTMs."""
    mmtms = [m for m in net.modules() if isinstance(m, MMTM)]
    sums: list[list[Tensor]] = [[] for _ in mmtms]  # per MMTM: [Σ S_A, Σ S_B] once the first batch is in

    def capture(i: int):
        def hook(module: MMTM, args: tuple, output: Any) -> None:
            batch_sums = [s.sum(0, dtype=torch.float64) for s in module.squeeze_vectors(args[0], args[1])]
            sums[i] = batch_sums if not sums[i] else [t + s for t, s in zip(sums[i], batch_sums)]
        return hook

    flags = {m: m.training for m in net.modules()}
    handles = [m.register_forward_hook(capture(i)) for i, m in enumerate(mmtms)]
    count = 0
    try:
        net.eval()
        with torch.inference_mode():
            for batch in batches:
                x0, x1 = batch.view0, batch.view1
                if device is not None:
                    x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
                net(x0, x1)
                count += len(x0)
    finally:
        for h in handles:
            h.remove()
        for m, training in flags.items():
            m.training = training
    if count == 0:
        raise ValueError("collect_mean_squeeze got no samples")
    for m, (sum_a, sum_b) in zip(mmtms, sums):
        m.set_mean_squeeze(sum_a / count, sum_b / count)
    return count


def cur_from_accuracies(acc_m0: float, acc_m1: float, acc_m0_only: float, acc_m1_only: float) -> dict[str, float]:
    """acc_m0 = A(f0), acc_m0_only = A(f0') (head 0, flow off); likewise for head 1. Raw values, never clipped."""
    u_m1_m0 = formulas.conditional_utilization(acc_m0, acc_m0_only)
    u_m0_m1 = formulas.conditional_utilization(acc_m1, acc_m1_only)
    return {"u_m1_given_m0": u_m1_m0, "u_m0_given_m1": u_m0_m1, "d_util": formulas.d_util(u_m1_m0, u_m0_m1)}


def evaluate_cur(run_dir: str | Path, *, checkpoint: str = "best", data: str | None = None, split: str = "test",
                 device: str = "auto", loader: str | None = None, batch_size: int | None = None,
                 num_threads: int | None = None) -> dict:
    """Both CUR passes in one call (SPEC §2) and `RUN/cur.json`.

    Pass 1: mean squeeze vectors of every MMTM over the training subset (val excluded), eval mode,
    deterministic transform. Pass 2: the split with normal fusion and with cross-modal flow off.
    The checkpoint file is only read; nothing in it changes."""
    run_dir = Path(run_dir)
    ckpt_path = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / f"{checkpoint}.pt"
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    data = data or cfg.data
    dev = resolve_device(device)
    check_dataset_matches(data, ckpt["classes"], cfg.views)
    net = build_network(cfg, len(ckpt["classes"])).to(dev)
    net.load_state_dict(ckpt["model"])
    amp = cfg.amp == "auto"
    channels_last = dev.type == "cuda" and cfg.channels_last != "off"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def make(split_name: str):
        return two_view_loader(data, split_name, views=tuple(cfg.views), batch_size=batch_size or max(cfg.batch_size, 32),
                               train=False, seed=cfg.seed, backend=loader or cfg.loader, device=dev,
                               num_threads=num_threads or cfg.num_threads)

    collect_mean_squeeze(net, make("train"), device=dev)
    split_loader = make(split)
    normal = evaluate(net, split_loader, mode=NORMAL, amp=amp, channels_last=channels_last)
    flow_off = evaluate(net, split_loader, mode=FLOW_OFF, amp=amp, channels_last=channels_last)
    result = {
        "acc": normal["acc"], "acc_m0": normal["acc_m0"], "acc_m1": normal["acc_m1"],
        "acc_m0_only": flow_off["acc_m0"], "acc_m1_only": flow_off["acc_m1"],
        **cur_from_accuracies(normal["acc_m0"], normal["acc_m1"], flow_off["acc_m0"], flow_off["acc_m1"]),
        "checkpoint": str(ckpt_path), "epochs_trained": ckpt.get("epoch"), "policy": cfg.policy, "views": list(cfg.views),
        "split": split, "n": normal["n"], "data": str(data),
    }
    atomic_write_text(run_dir / "cur.json", json.dumps(result, indent=2) + "\n")
    return result
