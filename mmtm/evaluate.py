"""Evaluation: per-head and fused accuracy in any fusion mode, and the CUR evaluation of a run (SPEC §2)."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from mmtm.fusion import FLOW_OFF, NORMAL
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


def evaluate_cur(run_dir: str | Path, *, checkpoint: str = "best", data: str | None = None, split: str = "test",
                 device: str = "auto", loader: str | None = None, batch_size: int | None = None,
                 num_threads: int | None = None) -> dict:
    """Both CUR passes in one call (SPEC §2) and `RUN/cur.json`.

    Pass 1: mean squeeze vectors of every MMTM over the training subset (val excluded), eval mode,
    deterministic transform. Pass 2: the split with normal fusion and with cross-modal flow off.
    The checkpoint file is only read; nothing in it changes."""
    from loaders import two_view_loader
    from mmtm.checkpoint import atomic_write_text, load_checkpoint
    from mmtm.config import from_dict
    from mmtm.engine import build_network, check_dataset_matches, resolve_device
    from mmtm.utilization import collect_mean_squeeze, cur_from_accuracies

    run_dir = Path(run_dir)
    ckpt_path = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / f"{checkpoint}.pt"
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    data = data or cfg.data
    dev = resolve_device(device if device != "auto" else "auto")
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
