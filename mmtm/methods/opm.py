"""OPM: on-the-fly prediction modulation, the dominant modality's features dropped with a dynamic probability.

Wei, Hu, Du, Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024 (the journal version of
OGM-GE, mmtm/methods/ogm_ge.py); official code GeWu-Lab/BML_TPAMI2024 at 4b3aa4f, `code/models/Classifier.py` and
`code/main.py` (docs/methods/README.md has the line-by-line comparison). Per batch, past the warm-up (`main.py:91`,
epochs 0..5 of 100): each modality's score is Σ_batch softmax(its share of the fused logits)[y]
(`Classifier.py:112-143`: its half of the concatenation's weights, half the bias); the dominant one gets the drop
probability q = q_base·(1 + λ·tanh(ρ − 1)), ρ its score over the other's (> 1), the other q = 0, both clipped to
[0, 1] (`calcu_q`, `:58-72`); then with probability p_exe (`:34`) each sample's feature of modality i (the encoder's
pooled output, the fusion layer's input) is kept with probability 1 − q_i and every feature is divided by 1 − θ,
θ = Σ d_i q_i / Σ d_i over the feature widths d_i (`execute_drop`, `:31-55`); otherwise nothing is dropped or
scaled. The fused output of the dropped features is trained with CE alone (`main.py:104, 114`). One more gradient
comes with it: the scaling's backward (`custom_autograd`, `:9-21`) returns θ itself as θ's gradient, and θ carries
the scores' graph (q is built from them, and they from the features with the fusion weights detached), so on a step
that drops, each encoder's features also get θ·∂θ/∂(their scores), as if θ²/2 were added to the loss; it is kept
here (`theta_term`), as the authors ran it.
Mapping: the official audio/visual encoders are this network's branches 0/1; the features are each branch's fc input
and ŷ = ŷ0/2 + ŷ1/2 plays the concatenation layer, so a modality's share is ŷi/2 (as in mmtm/methods/ogm_ge.py) and
a dropped feature leaves its head its bias; the scores come from the undropped features of the same forward, as
there. With MMTM fusion a dropped feature is dropped after the fusion modules, where the official concatenation
sits. The heads are recomputed on the dropped features in the loss hook, in float32 (under bf16 autocast the
forward's own heads run in bf16).
Defaults (`main.py:42-44`, argparse, and `code/scripts/train_opm.sh`): q_base = 0.5, λ = 0.5, p_exe = 0.7; warm-up 6
epochs (`epoch <= 5` of the 0-based epochs).
Deviations: the draws come from the policy's own seeded generator (the official code draws the p_exe coin from
NumPy's and the masks from torch's global RNG), one uniform per step for the coin and one per sample and view for
the masks, whether or not the drop runs; under DDP the scores are summed over ranks first, so every rank takes the
same q and the same coin (each rank draws its masks from the same generator state, as mmtm/methods/moddrop.py
does). The official code also removes samples whose features are all dropped and skips a batch with none left
(`main.py:95-101`); only the dominant modality has q > 0, so that never happens and is not implemented.
Cost: two small linear layers and one backward through them; no extra pass of the network.
The journal code's OGM options (`main.py:116-169`), off in its OPM script, are here too (`opm_ogm`): past the same
warm-up and inside its window (epochs 0..80 of 100, `main.py:46-47`: the first 81%), after backward, every 4-D
gradient of encoder i is multiplied by k_i (`ogm`), plus N(0, std + 1e-8) of the unscaled gradient for both
encoders (`ogm-ge`); k from the same scores: the dominant modality (ρ = s0/s1 > 1: modality 0, else modality 1,
equal scores included) 1 − tanh(α·ρ_dom), the other 1; or with OGM+ (`opm_ogm_coeff plus`, `--use_OGM_plus`) the
other modality ×4 and the dominant ×1 (`:128-152`). Defaults α = 1.0 and the window (argparse; its OGM script uses
0.8 and epochs 0..60). The noise comes from the policy's generator, after the masks' draws.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmtm.methods.ogm_ge import conv_params, in_window, modulate_, true_class_scores
from mmtm.training.policy import SeededPolicy

DEFAULT_Q_BASE = 0.5
DEFAULT_LAMBDA = 0.5
DEFAULT_P_EXE = 0.7
DEFAULT_WARMUP_EPOCHS = 6  # main.py:91: warm_up = 1 if epoch <= 5
OGM_MODES = ("off", "ogm", "ogm-ge")  # off: the OPM script (no --use_modulation); else --modulation OGM | OGM_GE
OGM_COEFFS = ("tanh", "plus")        # plus: --use_OGM_plus
DEFAULT_OGM_ALPHA = 1.0
OGM_WINDOW_SHARE = 81 / 100  # epochs 0..80 of 100 (main.py:46-47)
OGM_PLUS = 4.0               # main.py:131, 136: the weak modality's factor under OGM+


def drop_probabilities(scores: Tensor, q_base: float = DEFAULT_Q_BASE, lam: float = DEFAULT_LAMBDA) -> Tensor:
    """[q0, q1] from [score0, score1]: q_i = q_base·(1 + λ·tanh(relu(score_i/score_j − 1))) where that tanh is
    > 0, else 0; clipped to [0, 1]."""
    ratio = torch.tanh(torch.relu(scores / scores.flip(0) - 1))
    q = torch.where(ratio > 0, q_base * (1 + lam * ratio), torch.zeros_like(ratio))
    return q.clamp(0.0, 1.0)


def draw(q: Tensor, batch_size: int, p_exe: float = DEFAULT_P_EXE,
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(keep, executed): keep bool [2, B], keep[i, b] = sample b keeps modality i's feature (probability 1 − q_i);
    executed a bool scalar, True with probability p_exe (official: rand >= 1 − p_exe). When not executed every
    feature is kept. Draws 1 + 2B uniforms from `generator` (on q's device)."""
    device = q.device
    executed = torch.rand((), generator=generator, device=device) >= 1 - p_exe
    keep = torch.rand(2, batch_size, generator=generator, device=device) < (1 - q)[:, None]
    return keep | ~executed, executed


def drop_share(q: Tensor, dims: Tensor) -> Tensor:
    """θ = (d0·q0 + d1·q1)/(d0 + d1), d_i the feature widths."""
    return (dims * q).sum() / dims.sum()


def drop_features(f0: Tensor, f1: Tensor, q: Tensor, keep: Tensor, executed: Tensor) -> tuple[Tensor, Tensor]:
    """(f0', f1'): when executed, f_i·keep_i/(1 − θ) (`drop_share`); otherwise the features unchanged."""
    theta = drop_share(q.detach(), feature_dims(f0, f1, q))
    scale = torch.where(executed, 1 / (1 - theta), torch.ones_like(theta))
    return tuple(f * (k[:, None].to(f.dtype) * scale.to(f.dtype)) for f, k in zip((f0, f1), keep))


def feature_dims(f0: Tensor, f1: Tensor, like: Tensor) -> Tensor:
    return torch.tensor([f0.shape[1], f1.shape[1]], dtype=like.dtype, device=like.device)


def theta_term(shares0: Tensor, shares1: Tensor, y: Tensor, scores: Tensor, dims: Tensor, executed: Tensor,
               q_base: float = DEFAULT_Q_BASE, lam: float = DEFAULT_LAMBDA, world_size: int = 1) -> Tensor:
    """A term of value 0 whose gradient is the official code's gradient of θ: its `custom_autograd.backward`
    returns θ itself as θ's gradient (`Classifier.py:20-21`), and θ depends on the scores through q, which the
    official code computes from the features with the fusion weights detached (`:112-143`). So on executed steps
    each branch's features get θ·∂θ/∂(their scores), the gradient of θ²/2 (as if θ²/2 were added to the loss).
    `shares_i` are this rank's ŷi/2 from the features with the heads' weights detached; `scores` the summed
    scores (over ranks under DDP, where DDP's mean over `world_size` ranks is undone, so the gradient is that of
    one process on the whole batch)."""
    with torch.enable_grad():
        s = scores.detach().requires_grad_()
        theta = drop_share(drop_probabilities(s, q_base, lam), dims)
        (d_theta,) = torch.autograd.grad(theta, s)
    local = torch.stack([shares.float().softmax(dim=1).gather(1, y[:, None]).sum() for shares in (shares0, shares1)])
    surrogate = world_size * theta.detach() * (d_theta * local).sum() * executed
    return surrogate - surrogate.detach()


@torch.no_grad()
def ogm_coefficients(scores: Tensor, alpha: float = DEFAULT_OGM_ALPHA, coeff: str = "tanh") -> Tensor:
    """[k0, k1], the journal code's OGM: modality 0 dominates when s0/s1 > 1, else modality 1 (ties included);
    `tanh`: the dominant one gets 1 − tanh(α·ρ_dom), the other 1; `plus`: the other gets 4, the dominant 1."""
    first = scores[0] / scores[1] > 1
    one = torch.ones_like(scores[0])
    if coeff == "plus":
        return torch.stack([torch.where(first, one, OGM_PLUS * one), torch.where(first, OGM_PLUS * one, one)])
    k0 = 1 - torch.tanh(alpha * torch.relu(scores[0] / scores[1]))
    k1 = 1 - torch.tanh(alpha * torch.relu(scores[1] / scores[0]))
    return torch.stack([torch.where(first, k0, one), torch.where(first, one, k1)])


class OPMPolicy(SeededPolicy):
    """OPM in the one training loop: every step regular; past the warm-up, the loss hook recomputes the two heads
    from their dropped inputs (see the module docstring) and returns the run's task loss on those; with `ogm` on,
    after backward the encoders' conv gradients are modulated as the journal code's OGM options do."""

    name = "opm"
    default_loss = "fused"

    def __init__(self, q_base: float = DEFAULT_Q_BASE, lam: float = DEFAULT_LAMBDA, p_exe: float = DEFAULT_P_EXE,
                 warmup_epochs: int = DEFAULT_WARMUP_EPOCHS, seed: int = 0, *, ogm: str = "off",
                 ogm_coeff: str = "tanh", ogm_alpha: float = DEFAULT_OGM_ALPHA, ogm_ends: int = 80):
        super().__init__(seed)
        self.q_base, self.lam, self.p_exe, self.warmup_epochs = q_base, lam, p_exe, warmup_epochs
        self.ogm, self.ogm_coeff, self.ogm_alpha, self.ogm_ends = ogm, ogm_coeff, ogm_alpha, ogm_ends
        self.last_q = torch.zeros(2)  # the last step's [q0, q1]; in the state so the ranks' agreement check sees it
        self._scores: Tensor | None = None  # this step's summed scores, for the OGM options

    @classmethod
    def from_config(cls, cfg) -> "OPMPolicy":
        return cls(cfg.opm_q_base, cfg.opm_lambda, cfg.opm_p_exe, cfg.opm_warmup_epochs, cfg.seed, ogm=cfg.opm_ogm,
                   ogm_coeff=cfg.opm_ogm_coeff, ogm_alpha=cfg.opm_ogm_alpha, ogm_ends=cfg.opm_ogm_end_epoch)

    def to(self, device: torch.device) -> "OPMPolicy":
        self.last_q = self.last_q.to(device)
        return super().to(device)

    @contextmanager
    def capture(self, net) -> Iterator[list]:
        # Each head's input (the branch's pooled feature), recorded as the forward passes it.
        heads = [net.branch0.fc, net.branch1.fc]
        captured = [heads, [None, None]]

        def keep_input(i):
            def hook(module, args):
                captured[1][i] = args[0]
            return hook

        handles = [head.register_forward_pre_hook(keep_input(i)) for i, head in enumerate(heads)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        if epoch < self.warmup_epochs:
            return super().loss(logits0, logits1, y, features, epoch)
        heads, (f0, f1) = features
        scores = true_class_scores(logits0 / 2, logits1 / 2, y)  # each branch's share of ŷ = ŷ0/2 + ŷ1/2
        ddp = dist.is_available() and dist.is_initialized()
        if ddp:
            dist.all_reduce(scores)
        with torch.no_grad():
            q = drop_probabilities(scores, self.q_base, self.lam)
        keep, executed = draw(q, len(y), self.p_exe, self.generator)
        self.last_q, self._scores = q, scores
        shares = [F.linear(f.float(), head.weight.detach(), head.bias.detach()) / 2 for f, head in zip((f0, f1), heads)]
        extra = theta_term(*shares, y, scores, feature_dims(f0, f1, q), executed, self.q_base, self.lam,
                           dist.get_world_size() if ddp else 1)
        f0, f1 = drop_features(f0.float(), f1.float(), q, keep, executed)
        dropped0, dropped1 = (F.linear(f, head.weight, head.bias) for f, head in zip((f0, f1), heads))
        return super().loss(dropped0, dropped1, y, features, epoch) + extra

    def after_backward(self, net, logits0: Tensor, logits1: Tensor, y: Tensor, epoch: int) -> None:
        scores, self._scores = self._scores, None
        if self.ogm == "off" or epoch < self.warmup_epochs or not in_window(epoch, 0, self.ogm_ends):
            return
        k = ogm_coefficients(scores, self.ogm_alpha, self.ogm_coeff)
        for branch, coeff in zip((net.branch0, net.branch1), k):
            if self.ogm == "ogm-ge":
                modulate_(conv_params(branch), coeff, self.generator)
            else:
                torch._foreach_mul_([p.grad for p in conv_params(branch) if p.grad is not None], coeff)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_q": self.last_q}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.last_q = state["last_q"].to(self.last_q.device)
