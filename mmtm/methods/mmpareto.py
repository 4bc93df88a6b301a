"""MMPareto: the multi-modal and the uni-modal losses' gradients of each encoder combined without conflict.

Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024 (arXiv 2405.17730);
official code GeWu-Lab/MMPareto_ICML2024, `code/MMPareto.py` and `code/min_norm_solvers.py` at a339db3
(docs/methods/README.md has the line-by-line comparison). Per batch the model is trained on L = L_mm + L_a + L_v,
the multi-modal head's CE and each uni-modal head's CE (`MMPareto.py:99-103, 180`); for each encoder m, with g_mm and
g_m the gradients of L_mm and of L_m on its parameters (heads excluded, `:76-84`): if cos(g_mm, g_m) > 0 the weights
are k = (1/2, 1/2), otherwise the min-norm point of the segment between them (MGDA for two tasks,
`min_norm_solvers.py:9-30`: k_mm = (⟨g_m,g_m⟩ − ⟨g_mm,g_m⟩)/‖g_mm − g_m‖², clipped to 0.999 and 0.001 at the
ends), k_m = 1 − k_mm (`MMPareto.py:165-174`). Then per parameter tensor p of the encoder: new = 2·k_mm·g_mm[p] +
2·k_m·g_m[p], and p's gradient becomes γ·new·max(1, ‖g_L[p]‖/‖new‖), g_L the gradient of the whole loss: never a
smaller step than the plain sum's (`:184-207`, γ = 1.5 hard-coded at `:178`). Heads keep g_L.

Mapping onto the two-head MMTM network: the multi-modal output is ŷ = (ŷ0 + ŷ1)/2, view i's output is head ŷi, so
L = CE(ŷ) + CE(ŷ0) + CE(ŷ1) (this policy's loss; `loss` fused names its multi-modal term); encoder i is branch i
without its fc; the heads (branch0.fc, branch1.fc) and the MMTM modules, which belong to neither encoder, keep g_L.
Deviations: with MMTM fusion CE(ŷ1) also reaches encoder 0 through the MMTMs; that share of g_L is in the norm the
step is rescaled to but not in the combined direction (the official uni-modal losses never reach the other encoder);
a tensor whose combined gradient is zero keeps a zero gradient (the official code divides by its zero norm: NaN, as
BalanceBenchmark's port does on every conflicting step, where a misassigned result leaves k = (0, 0)); the inner
products are taken once over the encoder's tensors (the official list also holds their concatenation, which doubles
every product and so leaves k as it is); under DDP the three gradients are averaged over ranks before anything is
decided, so every rank takes the same k (the official code runs DataParallel, one process).
Cost: three extra backward passes per step (the official code makes the same three).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmtm.science.network import fused_logits
from mmtm.training.policy import StepPolicy

DEFAULT_GAMMA = 1.5  # MMPareto.py:178
AGREE = 0.5          # each weight when the two gradients agree (MMPareto.py:166-167)
CLIP = (0.999, 0.001)  # the solver's weight of g_mm when the optimum is an end of the segment


def encoder_params(branch: nn.Module) -> list[nn.Parameter]:
    """Encoder m's parameters: the branch without its head (the official code skips names with 'head')."""
    return [p for name, p in branch.named_parameters() if not name.startswith("fc.")]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


@torch.no_grad()
def pareto_weights(g_mm: Sequence[Tensor], g_m: Sequence[Tensor]) -> Tensor:
    """[k_mm, k_m] for one encoder (float64, on the gradients' device, no host sync): (1/2, 1/2) if ⟨g_mm, g_m⟩ > 0,
    else the min-norm combination of the two on the segment between them."""
    v11, v12, v22 = _dot(g_mm, g_mm), _dot(g_mm, g_m), _dot(g_m, g_m)
    denominator = v11 + v22 - 2 * v12
    inner = (v22 - v12) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    k_mm = torch.where(v12 >= v11, torch.full_like(v11, CLIP[0]), torch.where(v12 >= v22, torch.full_like(v11, CLIP[1]),
                                                                              inner))
    k_mm = torch.where(v12 > 0, torch.full_like(k_mm, AGREE), k_mm)
    return torch.stack([k_mm, 1 - k_mm])


@torch.no_grad()
def pareto_gradients(g_all: Sequence[Tensor], g_mm: Sequence[Tensor], g_m: Sequence[Tensor],
                     gamma: float = DEFAULT_GAMMA) -> tuple[list[Tensor], Tensor]:
    """(the encoder's new gradients, [k_mm, k_m]) from the gradients of the whole loss (g_all), of the multi-modal
    loss and of its own uni-modal loss, tensor by tensor: γ·new·max(1, ‖g_all‖/‖new‖), new = 2·k_mm·g_mm + 2·k_m·g_m;
    a zero `new` stays zero."""
    k = pareto_weights(g_mm, g_m)
    out = []
    for total, mm, own in zip(g_all, g_mm, g_m):
        new = (2 * k[0] * mm.double() + 2 * k[1] * own.double())
        new_norm, total_norm = new.norm(), total.double().norm()
        ratio = total_norm / torch.where(new_norm > 0, new_norm, torch.ones_like(new_norm))
        scale = torch.where((new_norm > 0) & (ratio > 1), ratio, torch.ones_like(ratio))
        out.append((new * scale * gamma).to(total.dtype))
    return out, k


def _average_over_ranks(grads: list[Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


class MMParetoPolicy(StepPolicy):
    """MMPareto in the one training loop: every step regular; the loss is CE(ŷ) + CE(ŷ0) + CE(ŷ1); before the
    loop's backward, the loss hook takes the gradients of CE(ŷ) on both encoders and of CE(ŷi) on encoder i; after
    it, each encoder's gradient is replaced by its Pareto combination (see the module docstring)."""

    name = "mmpareto"
    default_loss = "fused"  # names the multi-modal term; the two uni-modal terms are always added
    own_loss = "fused + heads"

    def __init__(self, gamma: float = DEFAULT_GAMMA):
        self.gamma = gamma
        self.last_weights: Tensor | None = None  # [2 encoders, (k_mm, k_m)] of the last step, for inspection
        self._grads: tuple | None = None

    @classmethod
    def from_config(cls, cfg) -> "MMParetoPolicy":
        return cls(cfg.mmpareto_gamma)

    @contextmanager
    def capture(self, net) -> Iterator[list[list[nn.Parameter]]]:
        # What `loss` differentiates: each encoder's parameters.
        yield [encoder_params(net.branch0), encoder_params(net.branch1)]

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        enc0, enc1 = features
        loss_mm = F.cross_entropy(fused_logits(logits0, logits1), y)
        loss0, loss1 = F.cross_entropy(logits0, y), F.cross_entropy(logits1, y)

        def grads(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
            got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]

        g_mm, g0, g1 = grads(loss_mm, enc0 + enc1), grads(loss0, enc0), grads(loss1, enc1)
        _average_over_ranks(g_mm + g0 + g1)
        self._grads = (enc0, enc1, g_mm[:len(enc0)], g_mm[len(enc0):], g0, g1)
        return loss_mm + loss0 + loss1

    def after_backward(self, net, logits0: Tensor, logits1: Tensor, y: Tensor, epoch: int) -> None:
        enc0, enc1, mm0, mm1, g0, g1 = self._grads
        self._grads = None
        weights = []
        for params, g_mm, g_m in ((enc0, mm0, g0), (enc1, mm1, g1)):
            g_all = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            new, k = pareto_gradients(g_all, g_mm, g_m, self.gamma)
            for p, g in zip(params, new):
                p.grad = g
            weights.append(k)
        self.last_weights = torch.stack(weights)

    def state_dict(self) -> dict:
        # Recomputed every step; kept so that the ranks' agreement check compares every rank's last decision.
        return {"last_weights": self.last_weights}

    def load_state_dict(self, state: dict) -> None:
        self.last_weights = state["last_weights"]
