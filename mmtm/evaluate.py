"""Evaluation: accuracy of ŷ and of each head, in any fusion mode, on one split."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

from mmtm.fusion import NORMAL
from mmtm.network import fused_logits, two_head_loss


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA (tensor cores); full precision elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def evaluate(net, loader, *, mode: str = NORMAL, amp: bool = False, channels_last: bool = False) -> dict:
    """Accuracy of ŷ = (ŷ0+ŷ1)/2 and of each head, and the mean summed loss, over the loader's split.

    Under torch.distributed each rank evaluates its own shard and the counts are summed."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # correct, correct0, correct1, loss*n, n
    for batch in loader:
        x0 = to_model_layout(batch.view0, channels_last)
        x1 = to_model_layout(batch.view1, channels_last)
        with autocast_for(device, amp):
            logits0, logits1 = net(x0, x1, mode=mode)
        logits0, logits1, y = logits0.float(), logits1.float(), batch.label
        n = y.numel()
        sums += torch.stack([
            (fused_logits(logits0, logits1).argmax(1) == y).sum(),
            (logits0.argmax(1) == y).sum(),
            (logits1.argmax(1) == y).sum(),
            two_head_loss(logits0, logits1, y) * n,
            torch.tensor(n, device=device),
        ]).to(torch.float64)
    net.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    correct, correct0, correct1, loss_sum, n = sums.tolist()
    if n == 0:
        return {"acc": math.nan, "acc_m0": math.nan, "acc_m1": math.nan, "loss": math.nan, "n": 0}
    return {"acc": correct / n, "acc_m0": correct0 / n, "acc_m1": correct1 / n, "loss": loss_sum / n, "n": int(n)}
