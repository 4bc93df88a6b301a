"""Evaluation: accuracy of ŷ and of each head, in any fusion mode, on one split."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from mmtm.fusion import REGULAR
from mmtm.hardware import Compute
from mmtm.network import fused_logits, two_head_loss


@torch.inference_mode()
def evaluate(net, loader, compute: Compute, *, mode: str = REGULAR) -> dict:
    """Accuracy of ŷ = (ŷ0+ŷ1)/2 and of each head, and the mean summed loss, over the loader's split.

    Under torch.distributed each rank evaluates its own shard and the counts are summed."""
    was_training = net.training
    net.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=compute.device)  # correct, correct0, correct1, loss*n, n
    for batch in loader:
        with compute.autocast():
            logits0, logits1 = net(compute.layout(batch.view0), compute.layout(batch.view1), mode=mode)
        logits0, logits1, y = logits0.float(), logits1.float(), batch.label
        n = y.numel()
        sums += torch.stack([
            (fused_logits(logits0, logits1).argmax(1) == y).sum(),
            (logits0.argmax(1) == y).sum(),
            (logits1.argmax(1) == y).sum(),
            two_head_loss(logits0, logits1, y) * n,
            torch.tensor(n, device=compute.device),
        ]).to(torch.float64)
    net.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    correct, correct0, correct1, loss_sum, n = sums.tolist()
    if n == 0:
        return {"acc": math.nan, "acc_m0": math.nan, "acc_m1": math.nan, "loss": math.nan, "n": 0}
    return {"acc": correct / n, "acc_m0": correct0 / n, "acc_m1": correct1 / n, "loss": loss_sum / n, "n": int(n)}
