"""Conditional utilisation rate (docs/science.md §2): the mean squeeze vectors S̄ that cross-modal flow off needs,
and the
CUR arithmetic.

Protocol (run by `mmtm.analysis.eval_cur.evaluate_cur`): `collect_mean_squeeze(net, train_batches)` (training subset,
eval transform), then per-head test accuracies with mode regular (A(f0), A(f1)) and mode flow_off (A(f0'), A(f1')),
then `cur_from_accuracies`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mmtm.science import formulas
from mmtm.science.fusion import MMTM


def collect_mean_squeeze(net: nn.Module, batches: Iterable[Any], device: torch.device | str | None = None) -> int:
    """One eval-mode pass (mode regular) over batches with .view0/.view1; stores every MMTM's S̄_A, S̄_B, the mean
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
