"""PMR: prototypical modal rebalance.

Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023 (arXiv 2211.07089);
official code fanyunfeng-bit/Modal-Imbalance-PMR, `main_Prototype_grad.py` at 3615e48 (checked), cross-checked with
GeWu-Lab/BalanceBenchmark `balancemm/trainer/PMR_trainer.py` at 4c1482f (same rules). Prototypes c_k^m = mean
feature of class k for modality m, computed without gradient, in eval mode, from the first len(loader)//10 batches
of the training loader, once before epoch 0 and again after every epoch (= at every epoch start), optionally
blended with the previous ones: c ← (1−m)·c_new + m·c_old. Prototype logits = −‖f − c_k‖ (Euclidean distance, NOT
squared). Per batch: score^m = Σ_batch softmax(proto-logits^m)[y], ρ = score0/score1; the prototypical
cross-entropy (PCE) of the slower modality is added with weight α: ρ > 1 → α·PCE1, ρ < 1 → α·PCE0, ρ = 1 → nothing;
the task loss is unchanged. The released code has neither a ρ-scaled coefficient (e.g. α·(ρ−1)) nor clipping, nor
the paper's prototype entropy regulariser (PER) for the dominant modality; like the released code, this one has no
PER. Defaults: α = 1.0 (argparse default; the scripts
use 1.0 for the two-image-modality CG-MNIST, 2.0–3.0 for CREMA-D/AVE), momentum m = 0.0 (every script in bash.sh;
argparse says 0.2, BalanceBenchmark 0.5), modulation window epochs 0..70 inclusive (the scripts; argparse 0..100).
Mapping: the feature of modality i is branch i's penultimate feature — the input of its fc, flatten(avgpool(·))
after MMTM₄, 8w-dim — captured by `branch_features`; m0 = branch 0, m1 = branch 1. These features already mix in
the other view through the MMTMs (the official fusions are late, its features uni-modal). A class with no sample in
the prototype set keeps its previous prototype, or, with none, gets a NaN row: it is left out of every softmax
(logit −inf) and samples of that class are left out of the scores and losses (the official code divides by zero).
Under DDP the class sums and counts are added over ranks, so every rank has the same prototypes.
"""
from __future__ import annotations

from collections.abc import Iterator
import contextlib
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmtm.network import two_head_loss
from mmtm.policy import EpochContext, StepPolicy

DEFAULT_ALPHA = 1.0
DEFAULT_MOMENTUM = 0.0
MODULATION_STARTS = 0  # first epoch with the PCE term (0-based, inclusive)
MODULATION_ENDS = 70  # last one (inclusive)
PROTOTYPE_FRACTION = 0.1  # share of the training loader's batches the prototypes are computed from
_DIST_SQ_FLOOR = 1e-12  # keeps sqrt's gradient finite at distance 0


@contextmanager
def branch_features(net: nn.Module) -> Iterator[list[Tensor | None]]:
    """Within the block, every forward of `net` (a TwoViewMMTMNet, not its DDP wrapper) stores the input of
    branch0.fc and branch1.fc — [B, 8w], with autograd history — in the yielded list [f0, f1]."""
    captured: list[Tensor | None] = [None, None]

    def tap(i: int):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured[i] = inputs[0]
        return hook

    handles = [net.branch0.fc.register_forward_pre_hook(tap(0)), net.branch1.fc.register_forward_pre_hook(tap(1))]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def class_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(Σ features of each class [C, D], count of each class [C, 1]), float32: what `prototypes` averages."""
    f = features.detach().float()
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    return sums, torch.bincount(labels, minlength=num_classes).to(f.dtype)[:, None]


@torch.no_grad()
def prototypes_from_sums(sums: Tensor, counts: Tensor, previous: Tensor | None = None,
                         momentum: float = DEFAULT_MOMENTUM) -> Tensor:
    """[C, D] class means; with `previous`: (1−momentum)·new + momentum·previous; a class with count 0 keeps its
    previous row (or is NaN without one); a NaN previous row is replaced by the new mean."""
    new = sums / counts  # absent class: 0/0 = NaN
    if previous is None:
        return new
    previous = previous.to(new)
    blended = torch.where(previous.isnan().any(1, keepdim=True), new, (1 - momentum) * new + momentum * previous)
    return torch.where(counts > 0, blended, previous)


def prototypes(features: Tensor, labels: Tensor, num_classes: int, previous: Tensor | None = None,
               momentum: float = DEFAULT_MOMENTUM) -> Tensor:
    """[C, D] float32 class means of `features` [N, D] (one modality, all sampled batches concatenated)."""
    return prototypes_from_sums(*class_sums(features, labels, num_classes), previous, momentum)


def prototype_logits(features: Tensor, protos: Tensor) -> Tensor:
    """[B, C] = −‖f_b − c_k‖ (Euclidean, not squared), float32, differentiable in `features`; −inf where the
    prototype row is NaN (a class with no prototype)."""
    f = features.float()
    missing = protos.isnan().any(1)
    protos = torch.where(missing[:, None], torch.zeros_like(protos), protos).to(f)  # no NaN in the graph: its grad
    dist = (f[:, None, :] - protos[None, :, :]).square().sum(-1).clamp(min=_DIST_SQ_FLOOR).sqrt()  # would leak
    return torch.where(missing[None, :], torch.full_like(dist, float("-inf")), -dist)


def _known(logits: Tensor, y: Tensor) -> Tensor:
    """bool [B]: the sample's class has a prototype."""
    return torch.isfinite(logits.gather(1, y[:, None]).squeeze(1))


def prototype_scores(proto_logits0: Tensor, proto_logits1: Tensor, y: Tensor) -> Tensor:
    """[score0, score1], score_i = Σ_batch softmax(proto-logits_i)[y] over samples whose class has a prototype."""
    out = []
    for logits in (proto_logits0, proto_logits1):
        p = logits.detach().softmax(1).gather(1, y[:, None]).squeeze(1)
        out.append(torch.where(_known(logits, y), p, torch.zeros_like(p)).sum())
    return torch.stack(out)


def rebalance_coefficients(proto_logits0: Tensor, proto_logits1: Tensor, y: Tensor,
                           alpha: float = DEFAULT_ALPHA) -> Tensor:
    """[β0, β1], the PCE weights: ρ = score0/score1 > 1 (m0 dominant) → [0, α]; ρ < 1 → [α, 0]; ρ = 1 → [0, 0].
    A tensor, no host sync, no gradient."""
    s = prototype_scores(proto_logits0, proto_logits1, y)
    rho = s[0] / s[1]
    zero, a = torch.zeros_like(rho), torch.full_like(rho, alpha)
    return torch.stack([torch.where(rho < 1, a, zero), torch.where(rho > 1, a, zero)])


def prototypical_ce(proto_logits: Tensor, y: Tensor) -> Tensor:
    """PCE: mean over samples (whose class has a prototype) of −log softmax(proto-logits)[y]; 0 if none."""
    known = _known(proto_logits, y)
    nll = -proto_logits.log_softmax(1).gather(1, y[:, None]).squeeze(1)
    nll = torch.where(known, nll, torch.zeros_like(nll))
    return nll.sum() / known.sum().clamp(min=1)


def pmr_loss(features0: Tensor, features1: Tensor, y: Tensor, protos0: Tensor, protos1: Tensor,
             alpha: float = DEFAULT_ALPHA) -> Tensor:
    """The extra loss PMR adds to the task loss: β0·PCE0 + β1·PCE1, β from `rebalance_coefficients` (α on the
    slower modality only)."""
    logits0, logits1 = prototype_logits(features0, protos0), prototype_logits(features1, protos1)
    beta = rebalance_coefficients(logits0, logits1, y, alpha)
    return beta[0] * prototypical_ce(logits0, y) + beta[1] * prototypical_ce(logits1, y)


class PMRPolicy(StepPolicy):
    """PMR in the one training loop: every step regular; at each epoch start inside the window the prototypes are
    recomputed (eval mode, no gradient, the first tenth of a shuffled pass over the training split); each step's
    forward captures both branches' penultimate features and PMR's loss is added to the task loss."""

    name = "pmr"

    def __init__(self, alpha: float = DEFAULT_ALPHA, momentum: float = DEFAULT_MOMENTUM,
                 starts: int = MODULATION_STARTS, ends: int = MODULATION_ENDS):
        self.alpha, self.momentum, self.starts, self.ends = alpha, momentum, starts, ends
        self.protos: list[Tensor] | None = None  # [protos0, protos1] while the epoch is in the window

    @classmethod
    def from_config(cls, cfg) -> "PMRPolicy":
        return cls(cfg.pmr_alpha, cfg.pmr_momentum, cfg.pmr_start_epoch, cfg.pmr_end_epoch)

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        if not self.starts <= epoch <= self.ends:
            self.protos = None
            return
        loader = context.loader("train", True)
        loader.set_epoch(epoch)
        take = max(1, int(len(loader) * PROTOTYPE_FRACTION))
        net, compute, num_classes = context.net, context.compute, len(loader.classes)
        features: list[list[Tensor]] = [[], []]
        labels = []
        was_training = net.training
        net.eval()
        with torch.no_grad(), branch_features(net) as captured:
            for i, batch in enumerate(loader):
                if i == take:
                    break
                with compute.autocast():
                    net(compute.layout(batch.view0), compute.layout(batch.view1))
                for m in (0, 1):
                    features[m].append(captured[m].float())
                labels.append(batch.label)
        net.train(was_training)
        y = torch.cat(labels)
        new = []
        for m in (0, 1):
            sums, counts = class_sums(torch.cat(features[m]), y, num_classes)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            previous = self.protos[m] if self.protos is not None else None
            new.append(prototypes_from_sums(sums, counts, previous, self.momentum))
        self.protos = new

    def capture(self, net):
        # Outside the window there are no prototypes and nothing to capture.
        return branch_features(net) if self.protos is not None else contextlib.nullcontext()

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        loss = two_head_loss(logits0, logits1, y)
        if self.protos is None:
            return loss
        return loss + pmr_loss(features[0], features[1], y, self.protos[0], self.protos[1], self.alpha)

    def state_dict(self) -> dict:
        return {"protos": self.protos}

    def load_state_dict(self, state: dict) -> None:
        self.protos = state["protos"]
