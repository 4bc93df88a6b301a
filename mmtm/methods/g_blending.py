"""Gradient-Blending: loss weights per head from the overfitting-to-generalisation ratio.

Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification Networks Hard?", CVPR 2020 (arXiv 1905.12681).
Official code: facebookresearch/VMZ (Caffe2, `c2/tutorials/gradient_blending.md` at 45b04d6) only consumes
precomputed weights (audio_weight, visual_weight, av_weight); the estimation is not released, so the formulas follow
the paper as recalled (§3.3, Prop. 1; the paper text could not be re-read here), cross-checked with
GeWu-Lab/BalanceBenchmark `balancemm/trainer/GBlending_trainer.py` at 4c1482f. With losses
measured at two checkpoints n and n+N (L^T on training data, L^V on validation data standing in for the true loss
L*): O = L^V − L^T (overfitting); ΔG_k = L^V_k(n) − L^V_k(n+N) (generalisation gained, > 0 when validation loss
falls); ΔO_k = O_k(n+N) − O_k(n); OGR_k = |ΔO_k/ΔG_k|; blending weights w_k ∝ ΔG_k/(ΔO_k)², normalised to Σw = 1;
loss = Σ_k w_k·CE_k. Rules chosen here where the paper gives none: ΔG_k ≤ 0 (the head did not generalise better)
gets weight 0 (the weight is a projection of the true-loss gradient, and a negative weight would ascend the loss;
BalanceBenchmark instead takes |ΔG/ΔO²|, which rewards a head whose validation loss rose); (ΔO_k)² is floored at
1e-12; if every ΔG_k ≤ 0 the weights fall back to uniform 1/3. Paper defaults: "offline" G-Blend estimates the weights
once, from models trained for N epochs from the start; "online" G-Blend re-estimates them every super-epoch from
the current (warm-started) weights; the exact super-epoch length could not be verified here (BalanceBenchmark
uses online, super_epoch = 10 epochs). Here (online): before epoch 0 and every `interval` epochs (default 5, so a
15-epoch demo run gets two estimates) the three heads' mean losses are measured in float32 on the training split
(deterministic transform) and on the validation split, and the weights come from the last two measurements; until
the first estimate the loss is the project's CE(ŷ0)+CE(ŷ1). Mapping: the three blended heads are ŷ0 (branch 0), ŷ1 (branch 1) and ŷ = (ŷ0+ŷ1)/2; index order everywhere is
(head0, head1, fused). Deviation: the paper trains a separate uni-modal network per modality to measure its
losses; here each head is a head of the one MMTM network, so ŷ0 is not uni-modal (MMTM feeds it m1) — the integrator
measures the three heads of the jointly trained network (or of a warm-started copy trained for the interval).
The paper's blended loss has Σw = 1; here it is doubled, to the scale of this project's CE(ŷ0)+CE(ŷ1), so that
every policy trains with the same learning rate at the same loss scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtm.evaluate import evaluate
from mmtm.network import two_head_loss
from mmtm.policy import EpochContext, StepPolicy

HEADS = ("head0", "head1", "fused")
DO_SQUARED_FLOOR = 1e-12
DEFAULT_INTERVAL = 5  # epochs between weight estimates
LOSS_SCALE = 2.0      # Σw = 1 → the scale of the two-head sum


def head_losses(logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """[CE(ŷ0,y), CE(ŷ1,y), CE(ŷ,y)] with ŷ = (ŷ0+ŷ1)/2, each a batch mean (float32). Also what the integrator
    averages over a split (weighting batches by size) to get the train/val losses `blend_weights` takes."""
    fused = (logits0.float() + logits1.float()) / 2
    return torch.stack([F.cross_entropy(logits0.float(), y), F.cross_entropy(logits1.float(), y),
                        F.cross_entropy(fused, y)])


@torch.no_grad()
def blend_weights(train_before: Tensor, val_before: Tensor, train_after: Tensor, val_after: Tensor) -> Tensor:
    """w [3] from per-head mean losses (each a tensor [3], order HEADS) at checkpoints n (before) and n+N (after):
    w_k ∝ max(ΔG_k, 0) / max(ΔO_k², 1e-12), Σw = 1; uniform if every ΔG_k ≤ 0."""
    train_before, val_before, train_after, val_after = (
        torch.as_tensor(t, dtype=torch.float64) for t in (train_before, val_before, train_after, val_after))
    delta_g = val_before - val_after
    delta_o = (val_after - train_after) - (val_before - train_before)
    raw = delta_g.clamp(min=0) / delta_o.square().clamp(min=DO_SQUARED_FLOOR)
    total = raw.sum()
    uniform = torch.full_like(raw, 1 / raw.numel())
    return torch.where(total > 0, raw / torch.where(total > 0, total, torch.ones_like(total)), uniform).float()


def blended_loss(logits0: Tensor, logits1: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """w0·CE(ŷ0,y) + w1·CE(ŷ1,y) + w2·CE(ŷ,y), ŷ = (ŷ0+ŷ1)/2: the training loss that replaces the two-head sum."""
    losses = head_losses(logits0, logits1, y)
    return (weights.to(losses.device, losses.dtype) * losses).sum()


class GBlendingPolicy(StepPolicy):
    """G-Blending in the one training loop: every step regular, the loss blended from the three heads with weights
    re-estimated every `interval` epochs (see the module docstring)."""

    name = "g-blending"

    def __init__(self, interval: int = DEFAULT_INTERVAL):
        self.interval = interval
        self.weights: Tensor | None = None    # None until the first estimate
        self.measured: Tensor | None = None   # [2, 3]: train and val losses per head at the last measurement

    @classmethod
    def from_config(cls, cfg) -> "GBlendingPolicy":
        return cls(cfg.gb_interval)

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        if epoch % self.interval:
            return
        compute = context.compute.fp32()
        now = torch.tensor([[r["loss_m0"], r["loss_m1"], r["loss_fused"]]
                            for r in (evaluate(context.net, context.loader(split, False), compute)
                                      for split in ("train", "val"))])
        if self.measured is not None:
            self.weights = blend_weights(self.measured[0], self.measured[1], now[0], now[1])
        self.measured = now

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        if self.weights is None:
            return two_head_loss(logits0, logits1, y)
        return LOSS_SCALE * blended_loss(logits0, logits1, y, self.weights)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "measured": self.measured}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.measured = state["weights"], state["measured"]
