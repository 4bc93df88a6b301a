"""Gradient-Blending: loss weights per head from the overfitting-to-generalisation ratio.

Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification Networks Hard?", CVPR 2020 (arXiv 1905.12681).
The official code, facebookresearch/VMZ (Caffe2), only consumes precomputed weights (`c2/tutorials/
gradient_blending.md`, `loss_creator.py:195-199`); the estimator is not released. The published online estimator is
followed as GeWu-Lab/BalanceBenchmark implements it (`balancemm/trainer/GBlending_trainer.py` at 4c1482f; line by
line in docs/methods/README.md).

Formulas, with losses measured at two checkpoints n and n+N (L^T on the training split, L^V on the validation split
standing in for the true loss): O = L^V − L^T (overfitting); ΔG_k = L^V_k(n) − L^V_k(n+N) (generalisation gained);
ΔO_k = O_k(n+N) − O_k(n); blending weights w_k ∝ ΔG_k/(ΔO_k)², Σw = 1; training loss Σ_k w_k·CE_k over the three
heads k = (ŷ0, ŷ1, ŷ = (ŷ0+ŷ1)/2).

Estimator `published` (the default): at each super-epoch boundary (epoch 0, `interval`, 2·`interval`, ...; default
interval 10, BalanceBenchmark's `super_epoch`) three warm-started copies of the network are trained, each for the
coming super-epoch (`interval` epochs, or to the end of the run) on the training split, with a fresh SGD of the run's
learning rate, momentum and weight decay: a view-0-only copy (view 1's input zeroed), a view-1-only copy (view 0's
input zeroed) and a copy with both views — as BalanceBenchmark zeroes the other modality's input, and each copy
trains CE on its fused output ŷ. Zeroing rather than detaching a branch: with MMTM fusion a detached branch would
still feed the other view's features into every MMTM, so the copy would not learn from one view; a zeroed input
carries no information of that view (as in ModDrop and the CUR's missing modality). Each copy's L^T and L^V of ŷ
(with the same zeroing) are measured at the warm start and at the end; its ΔG and ΔO give the weight of its head
(view-0 copy → ŷ0, view-1 copy → ŷ1, both views → ŷ), and the weights apply at once to the coming super-epoch. The
copies are discarded; the network being trained is not changed by the estimate. Cost: three extra trainings of the
whole run, without validation or the CLS meter: 2.7× a vanilla run on the demo preset (compare's cost table).
Estimator `retrospective` (this project's earlier one, kept to compare): the jointly trained network's three heads
measured every `interval` epochs; the weights from the last two measurements, so they are one interval old and
measured under the previous weights' loss; until the second measurement the loss is the run's task loss.

Rules chosen here where the sources give none or differ: ΔG_k ≤ 0 (the head did not generalise better) gets weight
0 (the weight is a projection of the true-loss gradient, and a negative weight would ascend the loss;
BalanceBenchmark takes |ΔG/ΔO²|, which rewards a head whose validation loss rose); (ΔO_k)² is floored at 1e-12; if
every ΔG_k ≤ 0 the weights fall back to uniform 1/3. L^T and L^V are mean losses over the whole split in eval mode
at the warm start and after the copy's training (BalanceBenchmark: sums of batch losses, the training one a running
sum during the copy's first and last epochs; its "validation" split is the test split on CREMA-D, which has none).
Under DDP each copy's gradients are averaged over ranks, so every rank estimates the same weights.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmtm.analysis.evaluate import evaluate
from mmtm.science.network import fused_loss, task_loss
from mmtm.training.policy import EpochContext, StepPolicy

HEADS = ("head0", "head1", "fused")
ZEROED_VIEW = (1, 0, None)   # the view each head's copy trains without (order HEADS)
ESTIMATORS = ("published", "retrospective")
DO_SQUARED_FLOOR = 1e-12
DEFAULT_INTERVAL = 10  # epochs per super-epoch (BalanceBenchmark's super_epoch)


def head_losses(logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """[CE(ŷ0,y), CE(ŷ1,y), CE(ŷ,y)] with ŷ = (ŷ0+ŷ1)/2, each a batch mean (float32)."""
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
    """w0·CE(ŷ0,y) + w1·CE(ŷ1,y) + w2·CE(ŷ,y), ŷ = (ŷ0+ŷ1)/2: the training loss that replaces the task loss."""
    losses = head_losses(logits0, logits1, y)
    return (weights.to(losses.device, losses.dtype) * losses).sum()


def without_view(batches, zeroed: int | None):
    """The batches with one view's (normalised) input set to zero; all of them as they are for None."""
    for b in batches:
        if zeroed is None:
            yield b
        else:
            views = [b.view0, b.view1]
            views[zeroed] = torch.zeros_like(views[zeroed])
            yield b._replace(view0=views[0], view1=views[1])


def _fused_losses(net, context: EpochContext, zeroed: int | None) -> tuple[float, float]:
    """(L^T, L^V): mean CE of ŷ over the training split and the validation split, eval mode, float32."""
    compute = context.compute.fp32()
    return tuple(evaluate(net, without_view(context.loader(split, False), zeroed), compute)["loss_fused"]
                 for split in ("train", "val"))


def _average_grads_over_ranks(net) -> None:
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        for p in net.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


def train_copy(net, context: EpochContext, zeroed: int | None, *, first_epoch: int, epochs: int,
               steps_per_epoch: int | None, lr: float, momentum: float, weight_decay: float) -> None:
    """Train `net` (a copy) in place for `epochs` epochs of the training split, CE of its fused output, with the
    view `zeroed` set to zero in every batch; the batches are those of epochs first_epoch.. of the run."""
    loader, compute = context.loader("train", True), context.compute
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    net.train()
    for epoch in range(first_epoch, first_epoch + epochs):
        loader.set_epoch(epoch)
        for i, batch in enumerate(without_view(loader, zeroed)):
            if steps_per_epoch is not None and i == steps_per_epoch:
                break
            optimizer.zero_grad(set_to_none=True)
            with compute.autocast():
                logits0, logits1 = net(compute.layout(batch.view0), compute.layout(batch.view1))
            fused_loss(logits0.float(), logits1.float(), batch.label).backward()
            _average_grads_over_ranks(net)
            optimizer.step()


def estimate_weights(context: EpochContext, *, first_epoch: int, epochs: int, steps_per_epoch: int | None,
                     lr: float, momentum: float, weight_decay: float) -> tuple[Tensor, Tensor]:
    """The published estimate: ([2, 3] losses at the warm start, [2, 3] after training) → weights [3]; rows L^T,
    L^V, columns HEADS. `context.net` is only read."""
    before, after = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    for k, zeroed in enumerate(ZEROED_VIEW):
        warm = copy.deepcopy(context.net)
        before[:, k] = torch.tensor(_fused_losses(warm, context, zeroed))
        train_copy(warm, context, zeroed, first_epoch=first_epoch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                   lr=lr, momentum=momentum, weight_decay=weight_decay)
        after[:, k] = torch.tensor(_fused_losses(warm, context, zeroed))
        del warm
    return blend_weights(before[0], before[1], after[0], after[1]), torch.stack([before, after])


class GBlendingPolicy(StepPolicy):
    """G-Blending in the one training loop: every step regular, the loss blended from the three heads with weights
    estimated at every super-epoch boundary (see the module docstring)."""

    name = "g-blending"
    default_loss = "fused"  # the multi-modal model's own loss; the retrospective estimator's until its first weights
    own_loss = "blend"

    def __init__(self, interval: int = DEFAULT_INTERVAL, estimator: str = "published", *, epochs: int = 1,
                 steps_per_epoch: int | None = None, lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.interval, self.estimator, self.epochs = interval, estimator, epochs
        self.copy_training = dict(steps_per_epoch=steps_per_epoch, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.weights: Tensor | None = None    # None until the first estimate
        self.measured: Tensor | None = None   # published: [2 (before, after), 2 (L^T, L^V), 3]; retrospective: [2, 3]

    @classmethod
    def from_config(cls, cfg) -> "GBlendingPolicy":
        return cls(cfg.gb_interval, cfg.gb_estimator, epochs=cfg.epochs, steps_per_epoch=cfg.max_steps_per_epoch,
                   lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        if epoch % self.interval:
            return
        if self.estimator == "published":
            self.weights, self.measured = estimate_weights(
                context, first_epoch=epoch, epochs=min(self.interval, self.epochs - epoch), **self.copy_training)
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
            return task_loss(self.task, logits0, logits1, y)
        return blended_loss(logits0, logits1, y, self.weights)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "measured": self.measured}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.measured = state["weights"], state["measured"]
