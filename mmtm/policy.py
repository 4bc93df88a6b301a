"""Step-mode policies (SPEC §4): which MMTM mode each training step runs in. One training loop serves them all.

Per step: `mode = policy.next_mode(epoch)`; forward/backward/step in that mode; update the speed meter;
`policy.observe(mode, d_speed, epoch)` with the meter's signal (`d_speed_signal`, mmtm/speed.py). Epochs count
from 0, so warmup_epochs=1 makes epoch 0 warm-up.
`make_policy(cfg)` builds the policy a run's config names, through the `POLICIES` registry.
"""
from __future__ import annotations

import random

from mmtm.fusion import REBALANCE_M0, REBALANCE_M1, REGULAR, STEP_MODES

# SPEC §4: the paper's hyper-parameters, the defaults of the policies and of the run config.
ALPHA = 0.01
REBALANCE_STEPS = 5   # Q
WARMUP_EPOCHS = 1
# What a re-balancing step updates: every parameter (official code) or only the slow branch's own θ.
REBALANCE_PARAMS = ("all", "slow")


class StepPolicy:
    """The interface; its defaults are the vanilla behaviour (every step regular, no state)."""

    name: str

    @classmethod
    def from_config(cls, cfg) -> "StepPolicy":
        return cls()

    def next_mode(self, epoch: int) -> str:
        """The mode of the step about to run."""
        return REGULAR

    def observe(self, mode: str, d_speed: float, epoch: int) -> None:
        """Called after each step with the mode it ran in and the meter's d_speed after it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VanillaPolicy(StepPolicy):
    name = "vanilla"


class BalancedPolicy(StepPolicy):
    """Balanced multi-modal learning: after a regular step past warm-up, d_speed > α re-balances m0 (the slow
    modality) for the next Q steps, d_speed < −α re-balances m1; |d_speed| ≤ α or nan does nothing."""

    name = "balanced"
    # The mode the rule picks when d_speed > α (m0 is slow) and when d_speed < −α (m1 is slow).
    ON_POSITIVE, ON_NEGATIVE = REBALANCE_M0, REBALANCE_M1

    def __init__(self, alpha: float = ALPHA, rebalance_steps: int = REBALANCE_STEPS,
                 warmup_epochs: int = WARMUP_EPOCHS):
        if alpha < 0 or rebalance_steps < 0 or warmup_epochs < 0:
            raise ValueError("alpha, rebalance_steps and warmup_epochs must be non-negative")
        self.alpha, self.rebalance_steps, self.warmup_epochs = alpha, rebalance_steps, warmup_epochs
        self.rebalance_mode = REGULAR
        self.remaining = 0  # re-balancing steps still to run

    @classmethod
    def from_config(cls, cfg) -> "BalancedPolicy":
        return cls(cfg.alpha, cfg.rebalance_steps, cfg.warmup_epochs)

    def next_mode(self, epoch: int) -> str:
        return self.rebalance_mode if self.remaining > 0 else REGULAR

    def observe(self, mode: str, d_speed: float, epoch: int) -> None:
        if mode != REGULAR:
            self.remaining = max(0, self.remaining - 1)
        elif epoch >= self.warmup_epochs:
            if d_speed > self.alpha:
                self.rebalance_mode, self.remaining = self.ON_POSITIVE, self.rebalance_steps
            elif d_speed < -self.alpha:
                self.rebalance_mode, self.remaining = self.ON_NEGATIVE, self.rebalance_steps

    def state_dict(self) -> dict:
        return {"rebalance_mode": self.rebalance_mode, "remaining": self.remaining}

    def load_state_dict(self, state: dict) -> None:
        self.rebalance_mode, self.remaining = state["rebalance_mode"], int(state["remaining"])


class FlippedPolicy(BalancedPolicy):
    """Control for the balanced rule (not in the paper): the same timing and counts, but each trigger re-balances
    the branch the rule does not choose. Comparing it with `balanced` separates what steering the right branch
    does from what re-balancing steps do by themselves."""

    name = "flipped"
    ON_POSITIVE, ON_NEGATIVE = REBALANCE_M1, REBALANCE_M0


class RandomPolicy(StepPolicy):
    """The random ablation: past warm-up each step is uniformly regular, re-balance m0 or re-balance m1.

    Its own seeded RNG (saved in state_dict), so a resumed run continues exactly and DDP ranks agree."""

    name = "random"

    def __init__(self, warmup_epochs: int = WARMUP_EPOCHS, seed: int = 0):
        self.warmup_epochs = warmup_epochs
        self.rng = random.Random(seed)
        self.drawn: str | None = None  # the draw for the coming step, so next_mode may be asked twice

    @classmethod
    def from_config(cls, cfg) -> "RandomPolicy":
        return cls(cfg.warmup_epochs, cfg.seed)

    def next_mode(self, epoch: int) -> str:
        if epoch < self.warmup_epochs:
            return REGULAR
        if self.drawn is None:
            self.drawn = self.rng.choice(STEP_MODES)
        return self.drawn

    def observe(self, mode: str, d_speed: float, epoch: int) -> None:
        self.drawn = None

    def state_dict(self) -> dict:
        version, internal, gauss_next = self.rng.getstate()
        return {"rng": [version, list(internal), gauss_next], "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss_next = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss_next))
        self.drawn = state["drawn"]


POLICIES: dict[str, type[StepPolicy]] = {p.name: p for p in (VanillaPolicy, BalancedPolicy, RandomPolicy,
                                                              FlippedPolicy)}


def make_policy(cfg) -> StepPolicy:
    """The policy `cfg.policy` names, with its hyper-parameters from the (validated) run config."""
    return POLICIES[cfg.policy].from_config(cfg)
