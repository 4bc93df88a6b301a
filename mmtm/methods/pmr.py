"""PMR: prototypical modal rebalance.

Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023 (arXiv 2211.07089);
official code fanyunfeng-bit/Modal-Imbalance-PMR, `main_Prototype_grad.py` at 3615e48 (docs/methods/README.md has
the line-by-line comparison). Prototypes c_k^m = mean feature of class k for modality m, computed without gradient,
in eval mode, from the first len(loader)//10 batches of the training loader, once before epoch 0 and again after
every epoch (= at every epoch start, inside the window or not), blended with the previous ones as
c ← (1−m)·c_new + m·c_old from the prototypes of epoch 2 on (the official code makes fresh prototypes after epoch 0
too: `if epoch <= 0` skips the blend, `:435-440`). Prototype logits = −‖f − c_k‖ (Euclidean distance, NOT squared,
no temperature: the official `--temperature` is parsed and never used). Per batch: score^m = Σ_batch
softmax(proto-logits^m)[y], ρ = score0/score1; the prototypical cross-entropy (PCE) of the slower modality is added
with weight α: ρ > 1 → α·PCE1, ρ < 1 → α·PCE0, ρ = 1 → nothing (`:169-178`). The released code has neither a
ρ-scaled coefficient nor clipping, nor the paper's prototype entropy regulariser (PER); neither has this one. The
task loss is the official code's CE on the fused output (`:178`), so this policy's default `loss` is `fused`, CE(ŷ);
with `--loss heads` α weighs the PCE against a sum of two CEs, twice the scale.
Defaults: α = 1.0 (argparse default; the scripts use 0.1–5.0: 1.0 for the two-image-modality CG-MNIST and most
AVE runs, 2.0–3.0 for most CREMA-D/AVE runs, 5.0 and 0.1 once each), momentum m = 0.0 (all scripts but two in
bash.sh, which use 0.5 and 0.2; argparse 0.2, BalanceBenchmark 0.5), window epochs 0..70 inclusive of 130 (26 of the
34 PMR lines of bash.sh; 60 of 100 for CG-MNIST, 100 in two scripts and argparse): a run of another length adds the
PCE term over the same share, its first 71/130 of epochs (`WINDOW_SHARE`, resolved in mmtm/training/config.py), unless
an end epoch is given. The official learning rate is 0.001 (SGD, momentum 0.9, weight
decay 1e-4, batch 64); here the run's optimiser and learning rate apply, as for every policy.
Mapping: the feature of modality i is branch i's penultimate feature — the input of its fc, flatten(avgpool(·))
after MMTM₄, 8w-dim — captured by `branch_features`; m0 = branch 0, m1 = branch 1. These features already mix in
the other view through the MMTMs (the official fusions are late, its features uni-modal; the official repository's
own MMTM model returns the same post-MMTM features, but the script that trains it is not released). A class with
no sample in the prototype set keeps its previous prototype, or, with none, gets a NaN row: it is left out of every
softmax (logit −inf) and samples of that class are left out of the scores and losses (the official code divides by
zero). Under DDP the class sums and counts are added over ranks, so every rank has the same prototypes, and the
scores are added over ranks before the slower modality is chosen, so every rank chooses the same one (the official
code runs one process).
"""
from __future__ import annotations

from collections.abc import Iterator
import contextlib
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmtm.science.network import task_loss
from mmtm.training.policy import EpochContext, StepPolicy

DEFAULT_ALPHA = 1.0
DEFAULT_MOMENTUM = 0.0
MODULATION_STARTS = 0  # first epoch with the PCE term (0-based, inclusive)
MOMENTUM_FROM_EPOCH = 2  # the first epoch whose prototypes blend in the previous ones (official code)
MODULATION_ENDS = 70  # last one (inclusive)
WINDOW_SHARE = 71 / 130  # the share of the run with the PCE term by default: epochs 0..70 of 130 (most scripts)
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
    Under DDP the scores are summed over ranks first, so every rank picks the same modality. A tensor, no host
    sync, no gradient."""
    s = prototype_scores(proto_logits0, proto_logits1, y)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(s)
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
    """PMR in the one training loop: every step regular; at each epoch start the prototypes are recomputed (eval
    mode, no gradient, the first tenth of a shuffled pass over the training split); inside the window each step's
    forward captures both branches' penultimate features and PMR's loss is added to the task loss."""

    name = "pmr"
    default_loss = "fused"

    def __init__(self, alpha: float = DEFAULT_ALPHA, momentum: float = DEFAULT_MOMENTUM,
                 starts: int = MODULATION_STARTS, ends: int = MODULATION_ENDS):
        self.alpha, self.momentum, self.starts, self.ends = alpha, momentum, starts, ends
        self.protos: list[Tensor] | None = None  # [protos0, protos1] of the current epoch
        self.in_window = False                    # whether the current epoch adds the PCE term
        self.device = torch.device("cpu")         # where loaded prototypes go

    @classmethod
    def from_config(cls, cfg) -> "PMRPolicy":
        return cls(cfg.pmr_alpha, cfg.pmr_momentum, cfg.pmr_start_epoch, cfg.pmr_end_epoch)

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        self.in_window = self.starts <= epoch <= self.ends
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
        momentum = self.momentum if epoch >= MOMENTUM_FROM_EPOCH else 0.0
        new = []
        for m in (0, 1):
            sums, counts = class_sums(torch.cat(features[m]), y, num_classes)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            previous = self.protos[m] if self.protos is not None else None
            new.append(prototypes_from_sums(sums, counts, previous, momentum))
        self.protos = new

    def capture(self, net):
        # Outside the window nothing uses the features.
        return branch_features(net) if self.in_window else contextlib.nullcontext()

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        loss = task_loss(self.task, logits0, logits1, y)
        if not self.in_window:
            return loss
        return loss + pmr_loss(features[0], features[1], y, self.protos[0], self.protos[1], self.alpha)

    def to(self, device: torch.device) -> "PMRPolicy":
        self.device = device
        return self

    def state_dict(self) -> dict:
        return {"protos": self.protos, "in_window": self.in_window}

    def load_state_dict(self, state: dict) -> None:
        self.in_window = state["in_window"]
        self.protos = None if state["protos"] is None else [p.to(self.device) for p in state["protos"]]
