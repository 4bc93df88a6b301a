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
uses online, super_epoch = 10 epochs). Choosing the interval, and measuring the losses, is the integrator's job.
Mapping: the three blended heads are ŷ0 (branch 0), ŷ1 (branch 1) and ŷ = (ŷ0+ŷ1)/2; index order everywhere is
(head0, head1, fused). Deviation: the paper trains a separate uni-modal network per modality to measure its
losses; here each head is a head of the one MMTM network, so ŷ0 is not uni-modal (MMTM feeds it m1) — the integrator
measures the three heads of the jointly trained network (or of a warm-started copy trained for the interval).
The paper's blended loss has Σw = 1, half the scale of this project's CE(ŷ0)+CE(ŷ1) at the same learning rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HEADS = ("head0", "head1", "fused")
DO_SQUARED_FLOOR = 1e-12


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
