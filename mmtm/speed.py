"""Conditional learning speed (SPEC §3): per-step μ of the four parameter groups, their sums M, s and d_speed.

Use per step: `mu = meter.measure()` right after backward (before optimizer.step), then
`meter.update(mu, regular=mode == REGULAR)`; `meter.d_speed` is then what the step policy observes.
"""
from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn

from mmtm import formulas

GROUPS = ("theta0", "theta1", "fusion0", "fusion1")


class SpeedMeter:
    def __init__(self, groups: dict[str, list[nn.Parameter]], window: int | None = None):
        missing = [g for g in GROUPS if g not in groups]
        if missing:
            raise ValueError(f"SpeedMeter needs the parameter groups {', '.join(missing)}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of steps, got {window}")
        self.groups = {name: list(params) for name, params in groups.items()}
        self.window = window  # None: cumulative since training began; K: the last K regular steps
        self.regular_steps = 0
        self._sums = {name: 0.0 for name in self.groups}
        self._recent: deque[dict[str, float]] = deque(maxlen=window)

    def measure(self) -> dict[str, float]:
        """μ_g = Σ‖∇p‖² / Σ‖p‖² for every group from the current .grad; one host sync for all groups."""
        ratios = [formulas.mu((p.grad for p in ps), ps) for ps in self.groups.values()]
        return dict(zip(self.groups, torch.stack(ratios).tolist()))

    def update(self, mu: dict[str, float], regular: bool) -> None:
        """Add μ to M; re-balancing steps (regular=False) are not counted."""
        if not regular:
            return
        self.regular_steps += 1
        if self.window is None:
            for name in self._sums:
                self._sums[name] += mu[name]
        else:
            self._recent.append({name: mu[name] for name in self._sums})

    @property
    def M(self) -> dict[str, float]:
        if self.window is None:
            return dict(self._sums)
        return {name: math.fsum(step[name] for step in self._recent) for name in self._sums}

    @property
    def s_m1_m0(self) -> float:
        """s(m1|m0) = log10(M_θ'0 / M_θ0)."""
        M = self.M
        return formulas.conditional_speed(M["fusion0"], M["theta0"])

    @property
    def s_m0_m1(self) -> float:
        """s(m0|m1) = log10(M_θ'1 / M_θ1)."""
        M = self.M
        return formulas.conditional_speed(M["fusion1"], M["theta1"])

    @property
    def d_speed(self) -> float:
        """d_speed = s(m1|m0) − s(m0|m1); nan before the first regular step."""
        return formulas.d_speed(self.s_m1_m0, self.s_m0_m1)

    def state_dict(self) -> dict:
        return {"window": self.window, "regular_steps": self.regular_steps,
                "sums": dict(self._sums), "recent": [dict(step) for step in self._recent]}

    def load_state_dict(self, state: dict) -> None:
        if state["window"] != self.window:
            raise ValueError(f"speed meter state has window {state['window']}, this meter {self.window}")
        self.regular_steps = int(state["regular_steps"])
        self._sums = {name: float(state["sums"][name]) for name in self._sums}
        self._recent = deque(({name: float(step[name]) for name in self._sums} for step in state["recent"]),
                             maxlen=self.window)
