"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement.

Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022
(arXiv 2203.15332); official code GeWu-Lab/OGM-GE_CVPR2022 `main.py` at 343dc1d (docs/methods/README.md has the
line-by-line comparison). The official code trains CE on the fused output only (`main.py:95`), so this policy's
default task loss is `fused`, CE(ŷ), ŷ = (ŷ0+ŷ1)/2 (`--loss heads` is the Greedy code's CE(ŷ0)+CE(ŷ1)).
Per batch, after backward and before the optimizer step: the official scores are taken from each modality's
additive share of the fused logits (out = out_a + out_v, `main.py:88-93`); here ŷ = ŷ0/2 + ŷ1/2, so the shares
are ŷ0/2 and ŷ1/2 and score_i = Σ_batch softmax(ŷi/2)[y]; ρ = score0/score1; the dominant branch (ρ > 1: branch
0; ρ < 1: branch 1) gets k = 1 − tanh(α·ρ_dom) with ρ_dom = its score over the other's (> 1), the other gets k = 1
(paper Eq. 10, `main.py:119-124`). GE: every 4-D gradient (the conv weights) of BOTH branches becomes
grad·k + N(0, std(grad) + 1e-8), std taken from the unscaled gradient (`main.py:136-139`); the non-dominant branch
(k = 1) gets the noise too; biases, BN, fc and the MMTM layers are left alone.
Defaults: α = 0.1 (the README's "default modulation setting"; it recommends 0.1 for VGGSound and 0.8 for CREMA-D;
`--alpha` has no argparse default). Modulation window: epochs 0..50 inclusive of the official 100 (`main.py:34,
41-42`), 0-based (`starts <= epoch <= ends`); outside it the step is plain (no scaling, no noise). A run of another
length modulates the same share, its first 51% of epochs (`WINDOW_SHARE`, resolved in mmtm/training/config.py), unless
an end epoch is given.
Mapping: the official audio/visual encoders are this network's `branch0`/`branch1` ResNets; ŷ0, ŷ1 are the branch
heads, whose halves make ŷ as the official code's halves of its fusion layer make its output. They are not
uni-modal: with MMTM fusion after layers 2-4 each branch head also sees the other view.
Deviations: at ρ = 1 exactly both k are 1 (the official code then modulates the audio branch with 1 − tanh(α));
the noise comes from the policy's own seeded generator (the official code draws from the global RNG); the
optimiser, learning rate and batch are the run's (the official scripts: SGD lr 1e-3, momentum 0.9, weight decay
1e-4, StepLR 70, batch 64), so that every policy is compared under one protocol.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmtm.training.policy import SeededPolicy

DEFAULT_ALPHA = 0.1
MODULATION_STARTS = 0  # first modulated epoch (0-based, inclusive)
MODULATION_ENDS = 50  # last modulated epoch (inclusive)
WINDOW_SHARE = 51 / 100  # the share of the run modulated by default: epochs 0..50 of the official 100
NOISE_STD_EPS = 1e-8  # the official code's std(grad) + 1e-8


@torch.no_grad()
def true_class_scores(logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """[score0, score1], score_i = Σ_batch softmax(logits_i)[y] (float32, no grad); the policy passes each branch's
    share of the fused logits, ŷi/2. Under DDP, all-reduce (sum) this
    before `coefficients_from_scores`, so every rank modulates with the same k (the official code saw the whole
    batch through DataParallel)."""
    p0 = logits0.float().softmax(dim=1).gather(1, y[:, None]).sum()
    p1 = logits1.float().softmax(dim=1).gather(1, y[:, None]).sum()
    return torch.stack([p0, p1])


@torch.no_grad()
def coefficients_from_scores(scores: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """[k0, k1] from [score0, score1]: the dominant branch gets 1 − tanh(α·ρ_dom), the other 1; equal scores give
    [1, 1]. A tensor on the scores' device, no host sync."""
    rho = scores[0] / scores[1]
    one = torch.ones_like(rho)
    k0 = torch.where(rho > 1, 1 - torch.tanh(alpha * rho), one)
    k1 = torch.where(rho < 1, 1 - torch.tanh(alpha * rho.reciprocal()), one)
    return torch.stack([k0, k1])


def in_window(epoch: int, starts: int = MODULATION_STARTS, ends: int = MODULATION_ENDS) -> bool:
    """Whether a (0-based) epoch is modulated: starts <= epoch <= ends, as in the official code."""
    return starts <= epoch <= ends


def conv_params(branch: nn.Module) -> list[nn.Parameter]:
    """The parameters OGM-GE touches in one branch: its 4-D ones (conv weights, downsample convs included)."""
    return [p for p in branch.parameters() if p.dim() == 4]


@torch.no_grad()
def modulate_(params: Iterable[Tensor], coeff: Tensor | float, generator: torch.Generator | None = None) -> None:
    """In place on each p.grad (None skipped): grad ← grad·coeff + N(0, std(grad) + 1e-8); std is the unscaled
    gradient's (torch.std, unbiased), as in the code. The noise is drawn from `generator` (on the gradients'
    device; None = the global RNG), one tensor per parameter in order. Under DDP this runs after the all-reduce,
    so every rank must draw the same noise (the same seed) or the replicas drift apart."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        std = g.std() + NOISE_STD_EPS
        eps = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
        g.mul_(coeff).add_(eps * std)


class OGMGEPolicy(SeededPolicy):
    """OGM-GE in the one training loop: every step is regular; after backward (and after the speed meter has
    measured the loss's gradient) and inside the epoch window, both branches' conv gradients are scaled by their k
    and get GE noise. Scores are summed over DDP ranks first, and every rank draws the same noise."""

    name = "ogm-ge"
    default_loss = "fused"

    def __init__(self, alpha: float = DEFAULT_ALPHA, starts: int = MODULATION_STARTS, ends: int = MODULATION_ENDS,
                 seed: int = 0):
        super().__init__(seed)
        self.alpha, self.starts, self.ends = alpha, starts, ends

    @classmethod
    def from_config(cls, cfg) -> "OGMGEPolicy":
        return cls(cfg.ogm_alpha, cfg.ogm_start_epoch, cfg.ogm_end_epoch, cfg.seed)

    def after_backward(self, net, logits0: Tensor, logits1: Tensor, y: Tensor, epoch: int) -> None:
        if not in_window(epoch, self.starts, self.ends):
            return
        scores = true_class_scores(logits0 / 2, logits1 / 2, y)  # each branch's share of ŷ = ŷ0/2 + ŷ1/2
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(scores)
        k = coefficients_from_scores(scores, self.alpha)
        modulate_(conv_params(net.branch0), k[0], self.generator)
        modulate_(conv_params(net.branch1), k[1], self.generator)
