"""MMTM, the Multimodal Transfer Module (Vaezi Joze et al., CVPR 2020), with the modes of Wu et al. (ICML 2022).

Per sample: S_A, S_B = global average pools of A [B,C_A,...] and B [B,C_B,...];
Z = ReLU(W_s [S_A; S_B] + b_s) (the shared `squeeze` layer); E_A = W_A Z + b_A, E_B = W_B Z + b_B (`excite_a`,
`excite_b`); g = σ(E) (or the paper's 2σ(E)); Ã = A ⊙ g_A, B̃ = B ⊙ g_B.

Modes (docs/science.md §1):
  regular       the above (the fusion of a regular training step, and of evaluation).
  flow_off      cross-modal flow off: g_A from [S_A; S̄_B], g_B from [S̄_A; S_B], S̄ = mean squeeze vectors over the
                training subset (set by `mmtm.science.utilization.collect_mean_squeeze`). Branch 0 then sees view 0
  only. rebalance_m0  g_A := running mean of g_A over regular training steps (a constant, no gradient); g_B as usual.
  rebalance_m1  g_B := running mean of g_B; g_A as usual.

Running means are the cumulative mean of the batch-mean gate over regular training steps, one equal weight per
step, as in the official code (nyukat/greedy_multimodal_learning). Fixed here:
  - the official code updates m1's running mean from m0's gate; here each mean tracks its own gate;
  - it also updates them on every forward, evaluation passes and re-balancing steps included; here only when
    `self.training and mode == "regular"`;
  - it allocates them on "cuda:<device>" and keeps them outside the state_dict; here they are persistent buffers,
    so they follow `.to()`, run on CPU, and are saved and restored with the checkpoint.
Like the official code the running means start at zero, so re-balancing assumes a warm-up of regular steps.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

REGULAR = "regular"
FLOW_OFF = "flow_off"
REBALANCE_M0 = "rebalance_m0"
REBALANCE_M1 = "rebalance_m1"
MODES = (REGULAR, FLOW_OFF, REBALANCE_M0, REBALANCE_M1)
# The modes a training step runs in (docs/science.md §4); flow_off is for evaluation only.
STEP_MODES = (REGULAR, REBALANCE_M0, REBALANCE_M1)
# The branch a re-balancing step is for: re-balance m0 when m0 (branch 0) is the slow modality.
REBALANCED_BRANCH = {REBALANCE_M0: 0, REBALANCE_M1: 1}
GATES = ("sigmoid", "2sigmoid")


def bottleneck_units(dim_a: int, dim_b: int, ratio: int) -> int:
    """The units of an MMTM's joint representation Z, the bottleneck `mmtm_ratio` sets."""
    return int(2 * (dim_a + dim_b) / ratio)


class MMTM(nn.Module):
    def __init__(self, dim_a: int, dim_b: int, ratio: int = 4, gate: str = "sigmoid"):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; expected one of {', '.join(GATES)}")
        self.gate = gate
        dim_z = bottleneck_units(dim_a, dim_b, ratio)
        self.squeeze = nn.Linear(dim_a + dim_b, dim_z)
        self.excite_a = nn.Linear(dim_z, dim_a)
        self.excite_b = nn.Linear(dim_z, dim_b)
        self.register_buffer("running_gate_a", torch.zeros(dim_a))
        self.register_buffer("running_gate_b", torch.zeros(dim_b))
        self.register_buffer("running_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean_squeeze_a", torch.zeros(dim_a))
        self.register_buffer("mean_squeeze_b", torch.zeros(dim_b))
        self.register_buffer("has_mean_squeeze", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def squeeze_vectors(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(S_A, S_B): global average pools, accumulated in float32 so they are safe under bf16 autocast."""
        return (a.mean(dim=tuple(range(2, a.dim())), dtype=torch.float32),
                b.mean(dim=tuple(range(2, b.dim())), dtype=torch.float32))

    def set_mean_squeeze(self, mean_a: Tensor, mean_b: Tensor) -> None:
        """Store S̄_A, S̄_B (means over the training subset), which the flow_off mode needs."""
        with torch.no_grad():
            self.mean_squeeze_a.copy_(mean_a)
            self.mean_squeeze_b.copy_(mean_b)
            self.has_mean_squeeze.fill_(True)

    def forward(self, a: Tensor, b: Tensor, mode: str = REGULAR) -> tuple[Tensor, Tensor]:
        if mode not in MODES:
            raise ValueError(f"unknown MMTM mode {mode!r}; expected one of {', '.join(MODES)}")
        s_a, s_b = self.squeeze_vectors(a, b)
        if mode == FLOW_OFF:
            if not self.has_mean_squeeze:
                raise RuntimeError("MMTM flow_off needs the mean squeeze vectors; "
                                   "run mmtm.science.utilization.collect_mean_squeeze first")
            g_a = self._gate(self.excite_a(self._joint(s_a, self.mean_squeeze_b.expand_as(s_b))))
            g_b = self._gate(self.excite_b(self._joint(self.mean_squeeze_a.expand_as(s_a), s_b)))
        else:
            z = self._joint(s_a, s_b)
            # A re-balanced gate skips its excitation layer: the constant carries no gradient, as in the code.
            g_a = self.running_gate_a.expand_as(s_a) if mode == REBALANCE_M0 else self._gate(self.excite_a(z))
            g_b = self.running_gate_b.expand_as(s_b) if mode == REBALANCE_M1 else self._gate(self.excite_b(z))
            if self.training and mode == REGULAR:
                self._update_running_gates(g_a, g_b)
        return a * _broadcast(g_a, a), b * _broadcast(g_b, b)

    def _joint(self, s_a: Tensor, s_b: Tensor) -> Tensor:
        return torch.relu(self.squeeze(torch.cat([s_a, s_b], dim=1)))

    def _gate(self, e: Tensor) -> Tensor:
        g = e.float().sigmoid()  # the gates are tiny [B,C]; float32 keeps them (and their running means) exact
        return 2 * g if self.gate == "2sigmoid" else g

    @torch.no_grad()
    def _update_running_gates(self, g_a: Tensor, g_b: Tensor) -> None:
        # new = (batch_mean + old*k)/(k+1), written as a lerp; tensor arithmetic, so no host sync
        weight = (self.running_steps + 1).reciprocal().to(self.running_gate_a.dtype)
        self.running_gate_a.lerp_(g_a.mean(0).to(weight.dtype), weight)
        self.running_gate_b.lerp_(g_b.mean(0).to(weight.dtype), weight)
        self.running_steps += 1


def _broadcast(g: Tensor, x: Tensor) -> Tensor:
    """[B,C] gate → [B,C,1,...] in x's dtype, so a bf16 feature map stays bf16."""
    return g.to(x.dtype).view(*g.shape, *([1] * (x.dim() - 2)))
