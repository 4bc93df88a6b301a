"""Evaluation: accuracy of ŷ and of each head, in any fusion mode, on one split."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmtm.science.fusion import REGULAR
from mmtm.training.hardware import Compute
from mmtm.science.network import fused_logits, two_head_loss


@torch.inference_mode()
def evaluate(net, loader, compute: Compute, *, mode: str = REGULAR, per_object: bool = False) -> dict:
    """Accuracy of ŷ = (ŷ0+ŷ1)/2 and of each head, the mean summed loss, and the mean loss of each head and of ŷ
    (loss_m0, loss_m1, loss_fused) over the loader's split, read from the device once per pass. With `per_object`
    (one process only) also "objects": each object's row index and whether ŷ, ŷ0 and ŷ1 were right, in loader order.

    Under torch.distributed each rank evaluates its own shard and the counts are summed."""
    was_training = net.training
    net.eval()
    # correct of ŷ, ŷ0, ŷ1; summed loss·n; CE(ŷ0)·n, CE(ŷ1)·n, CE(ŷ)·n; n. Sums stay on the device; n is counted
    # on the host (a batch's size is known there) and joins them once, so no batch waits for the GPU.
    sums = torch.zeros(8, dtype=torch.float64, device=compute.device)
    n = 0
    rows: list[torch.Tensor] = []  # per batch: index, right of ŷ, ŷ0, ŷ1 (per_object only)
    for batch in loader:
        with compute.autocast():
            logits0, logits1 = net(compute.layout(batch.view0), compute.layout(batch.view1), mode=mode)
        logits0, logits1, y = logits0.float(), logits1.float(), batch.label
        fused = fused_logits(logits0, logits1)
        size = y.numel()
        sums[:7] += torch.stack([
            (fused.argmax(1) == y).sum(), (logits0.argmax(1) == y).sum(), (logits1.argmax(1) == y).sum(),
            two_head_loss(logits0, logits1, y) * size,
            F.cross_entropy(logits0, y) * size, F.cross_entropy(logits1, y) * size, F.cross_entropy(fused, y) * size,
        ]).to(torch.float64)
        n += size
        if per_object:
            rows.append(torch.stack([batch.index.to(y.device).long(), (fused.argmax(1) == y).long(),
                                     (logits0.argmax(1) == y).long(), (logits1.argmax(1) == y).long()]))
    net.train(was_training)
    sums[7] = n
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    correct, correct0, correct1, loss, loss0, loss1, loss_fused, n = sums.tolist()
    if n == 0:
        return {key: math.nan for key in ("acc", "acc_m0", "acc_m1", "loss", "loss_m0", "loss_m1", "loss_fused")} \
            | {"n": 0}
    result = {"acc": correct / n, "acc_m0": correct0 / n, "acc_m1": correct1 / n, "loss": loss / n,
              "loss_m0": loss0 / n, "loss_m1": loss1 / n, "loss_fused": loss_fused / n, "n": int(n)}
    if per_object:
        index, right, right0, right1 = torch.cat(rows, dim=1).cpu().tolist()
        result["objects"] = {"index": index, "fused": right, "head0": right0, "head1": right1}
    return result
