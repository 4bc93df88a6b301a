"""Linear probes: how well each frozen branch's pooled features classify, whatever loss trained its head.

Under the fused task loss CE(ŷ), ŷ = (ŷ0 + ŷ1)/2, the branch heads ŷ0, ŷ1 are not trained as classifiers, so their
accuracies A(f0), A(f1) cannot be compared with those of runs trained on CE(ŷ0) + CE(ŷ1). The remedies' authors
measure each modality by a linear classifier on its frozen encoder instead (OGM-GE issue #32; PMR issue #10); this
is that measure for the two branches.

Recipe (fixed, so probes of different runs compare): the features are the inputs of each branch's fc — the pooled
8w-dim features after MMTM₄ — of every object of the training split (val excluded) and of the measured split, in
eval mode, float32, the deterministic transform; standardised by the training features' mean and std (a feature
constant over the training split is dropped); a multinomial logistic regression (weights and bias, zero-initialised)
minimising mean CE + `L2`/2·‖W‖² by full-batch L-BFGS (strong Wolfe line search, at most `ITERATIONS` iterations)
in float64. Nothing is drawn at random (the "seed" of this recipe is its zero start), so the probe of a checkpoint
is the same number every time. A probe is fitted per branch and per fusion mode: "regular"
(the network as trained: each branch's features already carry the other view through the MMTMs) and, for a
two-view run, "flow off" (the other view's squeeze replaced by its training mean, the CUR protocol's mode: what the
branch carries of its own view).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtm.science.fusion import FLOW_OFF, REGULAR
from mmtm.training.hardware import Compute

L2 = 1e-3
ITERATIONS = 200
CONSTANT = 1e-5  # a feature whose std is below this share of its scale is constant


def _fc_layers(net) -> tuple:
    """Each branch's head; a single-view network's one head stands for both, as in its forward."""
    if hasattr(net, "branch0"):
        return net.branch0.fc, net.branch1.fc
    return net.branch.fc, net.branch.fc


@torch.no_grad()
def pooled_features(net, loader, compute: Compute, mode: str = REGULAR) -> tuple[Tensor, Tensor, Tensor]:
    """(features of branch 0 [N, D], of branch 1 [N, D], labels [N]) over the loader's split, float64 on the CPU."""
    captured: list[list[Tensor]] = [[], []]
    labels = []

    def tap(i: int):
        def hook(module, inputs):
            captured[i].append(inputs[0].detach().to("cpu", torch.float64))
        return hook

    was_training = net.training
    net.eval()
    handles = [fc.register_forward_pre_hook(tap(i)) for i, fc in enumerate(_fc_layers(net))]
    try:
        for batch in loader:
            net(compute.layout(batch.view0), compute.layout(batch.view1), mode=mode)
            labels.append(batch.label.detach().to("cpu"))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return torch.cat(captured[0]), torch.cat(captured[1]), torch.cat(labels).long()


def fit_probe(x: Tensor, y: Tensor, num_classes: int, l2: float = L2, iterations: int = ITERATIONS):
    """The probe fitted on training features `x` [N, D] and labels `y`: a function from features to logits."""
    x = x.to(torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    # A feature that does not vary over the training split is dropped (z = 0), not blown up from rounding noise.
    std = torch.where(std > CONSTANT * (mean.abs() + 1), std, torch.full_like(std, torch.inf))
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 / 2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w, b = w.detach(), b.detach()
    return lambda features: ((features.to(torch.float64) - mean) / std) @ w + b


def probe_accuracy(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int) -> float:
    """Accuracy on (test features, labels) of the probe fitted on (train features, labels)."""
    probe = fit_probe(*train, num_classes)
    x, y = test
    return (probe(x).argmax(1) == y).double().mean().item()


def probe_accuracies(net, train_loader, test_loader, compute: Compute, num_classes: int, *,
                     flow_off: bool) -> dict:
    """cur.json's probe fields: probe_m0, probe_m1 (regular fusion) and, with `flow_off` (the mean squeezes already
    collected), probe_m0_only, probe_m1_only; with the recipe's settings."""
    modes = [(REGULAR, "")] + ([(FLOW_OFF, "_only")] if flow_off else [])
    out = {}
    for mode, suffix in modes:
        train0, train1, train_y = pooled_features(net, train_loader, compute, mode)
        test0, test1, test_y = pooled_features(net, test_loader, compute, mode)
        out[f"probe_m0{suffix}"] = probe_accuracy((train0, train_y), (test0, test_y), num_classes)
        out[f"probe_m1{suffix}"] = probe_accuracy((train1, train_y), (test1, test_y), num_classes)
    out["probe_recipe"] = {"l2": L2, "iterations": ITERATIONS}
    return out
