"""ModDrop: modality dropout, here one of the two views zeroed for a random subset of samples.

Neverova, Wolf, Taylor, Nebout, "ModDrop: adaptive multi-modal gesture recognition", IEEE TPAMI 38(8), 2016
(arXiv 1501.00102, 2014/2015). No official code is released. ModDrop multiplies each modality's whole input by an
independent per-sample Bernoulli selector during the fusion training stage, so the network learns to predict from
any subset of modalities; the per-modality dropping probability was about 0.1 as recalled from the paper (not
re-read here: unverified). Mapping used here, as this project's method spec asks: per sample, with probability p
exactly one view is dropped, view 0 or view 1 with equal chance (each view p/2), never both; "dropped" = its
normalised image set to 0 (the ImageNet mean colour) before the forward, so branch i's head then sees the other
view only through the MMTMs, and the loss is left as is. Default p = 0.2, i.e. 0.1 per view, matching ModDrop's
per-modality rate. Deviation: ModDrop's selectors are independent, so it can also drop both modalities (all-zero
input) with probability p_0·p_1; here that case is excluded. Alternative not taken: replacing the dropped view's
squeeze vectors by their training mean (the CUR protocol's cross-modal-flow-off) — it only cuts the cross-modal path
inside the MMTMs while the "dropped" view still drives its own branch and head, so it is not a modality dropout;
it also needs mean squeezes that drift during training and a per-sample fusion mode the network does not have.
Zeroing the input is exact, costs nothing and needs no change to the network.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmtm.training.policy import SeededPolicy

DEFAULT_P = 0.2  # probability that a sample has one view dropped (0.1 per view)


def drop_mask(batch_size: int, p: float = DEFAULT_P, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """bool [B, 2], column i = view i dropped. One uniform u per sample: u < p/2 drops view 0, p/2 ≤ u < p drops
    view 1, so a row has at most one True, P(row dropped) = p, P(view i dropped) = p/2. Deterministic given the
    generator (which must live on `device`)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    u = torch.rand(batch_size, generator=generator, device=device)
    return torch.stack([u < p / 2, (u >= p / 2) & (u < p)], dim=1)


def apply(view0: Tensor, view1: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(view0', view1'): new tensors, each sample's dropped view replaced by exact zeros; the inputs are untouched.
    Call before the forward, on the normalised [B, 3, H, W] views, with `mask` from `drop_mask`."""
    def zero(view: Tensor, dropped: Tensor) -> Tensor:
        dropped = dropped.to(view.device).view(-1, *([1] * (view.dim() - 1)))
        return torch.where(dropped, torch.zeros((), dtype=view.dtype, device=view.device), view)
    return zero(view0, mask[:, 0]), zero(view1, mask[:, 1])


class ModDropPolicy(SeededPolicy):
    """Modality dropout in the one training loop: every step regular, each training batch's views masked by
    `drop_mask` before the forward (evaluation sees both views)."""

    name = "moddrop"

    def __init__(self, p: float = DEFAULT_P, seed: int = 0):
        super().__init__(seed)
        self.p = p

    @classmethod
    def from_config(cls, cfg) -> "ModDropPolicy":
        return cls(cfg.moddrop_p, cfg.seed)

    def inputs(self, view0: Tensor, view1: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        return apply(view0, view1, drop_mask(len(view0), self.p, self.generator, self.generator.device))
