"""The paper's formulas (docs/science.md §2-3), as small pure functions on floats and tensors.

CLS (conditional learning speed, during training):
    μ_g(t)   = Σ_{p∈g} ‖∇p‖² / Σ_{p∈g} ‖p‖²
    M_g      = Σ_t μ_g(t) over regular steps (the paper: since training began; see mmtm/science/speed.py for the views)
    s(m1|m0) = log10(M_θ'0 / M_θ0),  s(m0|m1) = log10(M_θ'1 / M_θ1),  d_speed = s(m1|m0) − s(m0|m1)
CUR (conditional utilisation rate, after training):
    u(m1|m0) = (A(f0) − A(f0')) / A(f0),  u(m0|m1) = (A(f1) − A(f1')) / A(f1),  d_util = u(m1|m0) − u(m0|m1)
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def sum_of_squares(tensors: Iterable[Tensor | None]) -> Tensor:
    """Σ ‖t‖² over the tensors as a 0-dim float32 tensor, without a host sync; None (no grad) counts as zero."""
    ts = [t for t in tensors if t is not None]
    if not ts:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(ts)).float().square().sum()


@torch.no_grad()
def mu(grads: Iterable[Tensor | None], params: Iterable[Tensor]) -> Tensor:
    """μ_g(t) = Σ_{p∈g} ‖∇p‖² / Σ_{p∈g} ‖p‖²  (ratio of the group sums, not a mean of per-tensor ratios),
    as a 0-dim float32 tensor on the parameters' device, so a step can read all groups in one host sync."""
    params = list(params)
    return (sum_of_squares(grads) / sum_of_squares(params)).to(params[0].device)


def conditional_speed(M_fusion: Tensor, M_uni: Tensor) -> Tensor:
    """s = log10(M_θ' / M_θ), elementwise on tensors; nan while either sum is still zero (no regular step yet)."""
    return torch.where((M_fusion > 0) & (M_uni > 0), torch.log10(M_fusion / M_uni), math.nan)


def d_speed(s_m1_m0, s_m0_m1):
    """d_speed = s(m1|m0) − s(m0|m1); > 0 means branch 0 leans on m1 more than branch 1 on m0 (m0 is slow)."""
    return s_m1_m0 - s_m0_m1


def conditional_utilization(acc_f: float, acc_f_only: float) -> float:
    """u = (A(f) − A(f')) / A(f), f' = the same head with cross-modal flow off. Never clipped: A(f') > A(f) gives
    u < 0."""
    if acc_f == 0:
        return math.nan
    return (acc_f - acc_f_only) / acc_f


def d_util(u_m1_m0: float, u_m0_m1: float) -> float:
    """d_util = u(m1|m0) − u(m0|m1)."""
    return u_m1_m0 - u_m0_m1


def sign_sentence(first: str, second: str, measures: str = "d_util, d_speed") -> str:
    """The one sentence every table of d_util or d_speed carries: which sign means which branch, and so which view,
    dominates (both are m1's term minus m0's)."""
    return f"{measures} < 0: the network leans on {first} (m0); > 0: on {second} (m1)."
