"""AGM: adaptive gradient modulation from each modality's mono-modal response.

Li, Li, Hu, Lei, Li, Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation", ICCV 2023
(arXiv 2308.07686); official code lihong2303/AGM_ICCV2023 at 5a65542 (docs/methods/README.md has the line-by-line
comparison; the CREMA-D audio-visual ResNet-18 pair, `model/CREMAD_net.py` and `run/CREMAD_main.py`, is the case
read here). Per batch: the network runs on both modalities (train mode) and, in eval mode, once with each modality
zeroed (`CREMAD_net.py:57-64`); each modality's response is half the total plus its own marginal,
out0 = (total − out[view 0 zeroed] + out[view 1 zeroed])/2, out1 likewise (`:7-17`), and out = out0 + out1 (equal
to the total in value) is trained with CE (`CREMAD_main.py:64-69`). Its score s_i is the batch mean of
−log max(softmax(out_i)[y], 1e-8) (`:130-143`); with the running averages s̄_i over every step so far (taken before
this step's update), k0 = exp(α·min(exp(s̄1 − s̄0) − exp(s1 − s0), 10)), k1 likewise (`:145-155`), and backward
hooks multiply the gradient reaching out0 by k0 and out1 by k1 (`CREMAD_net.py:42-55`), so the two zeroed-view
passes get gradients too. After backward, if the fusion layer's weight gradient leaves [−1, 1], the whole model's
gradient is clipped to norm 1 (`CREMAD_main.py:233-238`).
Mapping: the official audio/visual networks are this network's views 0/1; each of the three passes gives
ŷ = (ŷ0 + ŷ1)/2, the network's fused output; the two heads' weights stand for the official fusion layer's weight in
the clipping test. With MMTM fusion a zeroed view still reaches the other branch through the MMTMs: the response is
still the network's output with that modality absent, which is what AGM measures (it was built for fusion that is
not late, `CREMAD_net.py:164` `AV_Early_Classifier`).
Defaults: α = 1.0 (`utils/config.py:76`, argparse; the README's one command uses 2.5 for AV-MNIST); modulation in
epochs 0..20 of the official 1-based epochs (`config.py:74-75`), i.e. its first 20 epochs, 0..19 here, which is
20/100 of the README's 100 epochs (`WINDOW_SHARE`, resolved in mmtm/training/config.py). Outside the window the official
code stops updating the coefficients but keeps the hooks, so they go on scaling with the last ones
(`CREMAD_main.py:159-166` only calls `update_scale` inside it); this policy does the same, and the running scores
are updated on every step as there.
Deviations: the official code also runs a pass with both modalities zeroed whose output nothing uses (not run
here); under DDP the per-sample losses are summed over ranks first, so every rank uses the same k (the official
code runs one process or DataParallel, which sees the whole batch); the scores stay on the device (no host sync).
Cost: two more forward passes of the network a step, and backward through both (the official code's, plus the
unused third forward it makes).
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

DEFAULT_ALPHA = 1.0
WINDOW_SHARE = 20 / 100  # epochs 1..20 of the README's 100 (1-based there): the first 20%
PROB_FLOOR = 1e-8        # CREMAD_main.py:133-134: a true-class probability below it counts as 1e-8
COEFF_CAP = 10.0         # CREMAD_main.py:151: min(optimal_ratio − ratio, 10)
CLIP_NORM = 1.0          # CREMAD_main.py:238
GRAD_LIMIT = 1.0         # CREMAD_main.py:237: the fusion weight's gradient leaving [−1, 1] triggers the clip


def modality_responses(total: Tensor, zeroed0: Tensor, zeroed1: Tensor) -> tuple[Tensor, Tensor]:
    """(out0, out1): out0 = (total − zeroed0 + zeroed1)/2, out1 = (total − zeroed1 + zeroed0)/2, where zeroedi is
    the output with view i zeroed."""
    return 0.5 * (total - zeroed0 + zeroed1), 0.5 * (total - zeroed1 + zeroed0)


@torch.no_grad()
def loss_sums(out0: Tensor, out1: Tensor, y: Tensor) -> Tensor:
    """[Σ −log max(p0[y], 1e-8), Σ −log max(p1[y], 1e-8), n] over the batch (p = softmax), in the outputs' dtype
    but at least float32, as the official code computes them. Under DDP, all-reduce (sum) this before taking the
    means."""
    dtype = torch.promote_types(out0.dtype, torch.float32)

    def nll(out: Tensor) -> Tensor:
        p = out.to(dtype).softmax(dim=1).gather(1, y[:, None]).squeeze(1)
        return -p.clamp(min=PROB_FLOOR).log().sum()
    return torch.stack([nll(out0), nll(out1), torch.tensor(float(len(y)), dtype=dtype, device=y.device)])


def coefficients(scores: Tensor, running: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """[k0, k1] from this batch's scores [s0, s1] and their running averages [s̄0, s̄1] (before this batch):
    k_i = exp(α·min(exp(s̄_j − s̄_i) − exp(s_j − s_i), 10)), j the other modality."""
    ratio = torch.exp(scores.flip(0) - scores)
    optimal = torch.exp(running.flip(0) - running)
    return torch.exp(alpha * (optimal - ratio).clamp(max=COEFF_CAP))


def update_running(running: Tensor, scores: Tensor, iteration: int) -> Tensor:
    """The running averages after this batch, the `iteration`-th (from 1): s̄·(t − 1)/t + s/t."""
    return running * (iteration - 1) / iteration + scores / iteration


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (the official identity module's full backward
    hook)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def modulated_output(out0: Tensor, out1: Tensor, k: Tensor) -> Tensor:
    """out0 + out1 in value; in backward the gradient reaching out_i is multiplied by k_i."""
    return _ScaleGrad.apply(out0, k[0]) + _ScaleGrad.apply(out1, k[1])


@torch.no_grad()
def clip_(params: Sequence[nn.Parameter], watched: Sequence[Tensor], max_norm: float = CLIP_NORM) -> None:
    """The official clip without a host sync: if any gradient in `watched` leaves [−1, 1], clip the gradients of
    `params` to total norm `max_norm` as torch.nn.utils.clip_grad_norm_ does (coefficient max_norm/(norm + 1e-6),
    at most 1)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    outside = torch.stack([(w.max() > GRAD_LIMIT) | (w.min() < -GRAD_LIMIT) for w in watched]).any()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.where(outside, (max_norm / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
    torch._foreach_mul_(grads, coef)


class AGMPolicy(StepPolicy):
    """AGM in the one training loop: every step regular; the forward also runs the network in eval mode with each
    view zeroed, the loss is CE(out0 + out1) with each response's gradient scaled by its k (see the module
    docstring), and after backward the official conditional clip."""

    name = "agm"
    default_loss = "fused"

    def __init__(self, alpha: float = DEFAULT_ALPHA, ends: int = 19):
        self.alpha, self.ends = alpha, ends
        self.running = torch.zeros(2, dtype=torch.float64)  # s̄0, s̄1
        self.coeff = torch.ones(2, dtype=torch.float64)     # k0, k1 (kept after the window, as the hooks are)
        self.iteration = 0
        self._nested = False

    @classmethod
    def from_config(cls, cfg) -> "AGMPolicy":
        return cls(cfg.agm_alpha, cfg.agm_end_epoch)

    def to(self, device: torch.device) -> "AGMPolicy":
        self.running, self.coeff = self.running.to(device), self.coeff.to(device)
        return self

    @contextmanager
    def capture(self, net) -> Iterator[dict]:
        # The two zeroed-view passes run where the loop's forward does (its autocast, its memory layout).
        out: dict = {}

        def zeroed_passes(module, args, kwargs, output):
            if self._nested:
                return
            x0, x1 = args[:2]
            training = module.training
            module.eval()
            self._nested = True
            try:
                out["zeroed0"] = module(torch.zeros_like(x0), x1, *args[2:], **kwargs)
                out["zeroed1"] = module(x0, torch.zeros_like(x1), *args[2:], **kwargs)
            finally:
                self._nested = False
                module.train(training)

        handle = net.register_forward_hook(zeroed_passes, with_kwargs=True)
        try:
            yield out
        finally:
            handle.remove()

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        total = fused_logits(logits0, logits1)
        zeroed0, zeroed1 = (fused_logits(*(o.float() for o in features[k])) for k in ("zeroed0", "zeroed1"))
        out0, out1 = modality_responses(total, zeroed0, zeroed1)
        sums = loss_sums(out0, out1, y)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        scores = (sums[:2] / sums[2]).double()
        self.iteration += 1
        if 0 <= epoch <= self.ends:
            self.coeff = coefficients(scores, self.running, self.alpha)
        self.running = update_running(self.running, scores, self.iteration)
        return F.cross_entropy(modulated_output(out0, out1, self.coeff), y)

    def after_backward(self, net, logits0: Tensor, logits1: Tensor, y: Tensor, epoch: int) -> None:
        heads = [b.fc.weight.grad for b in (net.branch0, net.branch1) if b.fc.weight.grad is not None]
        clip_(list(net.parameters()), heads)

    def state_dict(self) -> dict:
        return {"running": self.running, "coeff": self.coeff, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.running = state["running"].to(self.running.device)
        self.coeff = state["coeff"].to(self.coeff.device)
        self.iteration = state["iteration"]
