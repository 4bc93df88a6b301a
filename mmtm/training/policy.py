"""Training policies: what differs between the algorithms that share the one training loop.

The paper's (docs/science.md §4) only choose each step's MMTM mode: vanilla, balanced, random, and the flipped
control. The
remedies of other papers (mmtm/methods/) also use the other hooks. Per step, the loop calls, in order:
`next_mode(epoch)`; `inputs(view0, view1, epoch)`; the forward in that mode inside `capture(net)`;
`loss(logits0, logits1, y, features, epoch)`; backward; the speed meter measures μ (it only observes);
`after_backward(...)`; the optimizer step; `observe(mode, d_speed, epoch)` with the meter's signal
(`d_speed_signal`, mmtm/science/speed.py). `start_epoch(epoch, context)` runs before each epoch. Every hook defaults to
the vanilla behaviour. Epochs count from 0, so warmup_epochs=1 makes epoch 0 warm-up.
`mmtm.training.registry.make_policy(cfg)` builds the policy a run's config names.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mmtm.science.fusion import REBALANCE_M0, REBALANCE_M1, REGULAR, STEP_MODES
from mmtm.training.hardware import Compute, Distributed
from mmtm.science.network import TwoViewMMTMNet, task_loss

# docs/science.md §4: the paper's hyper-parameters, the defaults of the policies and of the run config.
ALPHA = 0.01
REBALANCE_STEPS = 5   # Q
WARMUP_EPOCHS = 1
# What a re-balancing step updates: every parameter (official code) or only the slow branch's own θ.
REBALANCE_PARAMS = ("all", "slow")


@dataclass
class EpochContext:
    """What a policy may use before an epoch: the network, how it computes, and loaders built on first use
    (`loader(split, train)`: train=True shuffles and flips by (seed, epoch) like the training loader)."""
    net: TwoViewMMTMNet
    compute: Compute
    ddp: Distributed
    loader: Callable[[str, bool], object]


class StepPolicy:
    """The interface; its defaults are the vanilla behaviour (every step regular, the task loss, no state)."""

    name: str
    default_loss = "heads"  # the task loss its authors trained with (a run's `loss` setting "auto" resolves to it)
    task = "heads"          # the run's task loss, set by `make_policy`
    own_loss: str | None = None  # the name of a loss of its own that it trains instead (compare's tables show it)
    rebalances = False   # runs re-balancing steps, which leave some fusion parameters without a gradient
    # Opt-in: its steps may be captured as CUDA graphs (it chooses modes on the host and nothing else). See
    # `runs_in_cuda_graphs`: a subclass that adds a step hook is eager unless it opts in again.
    cuda_graphs = False

    @classmethod
    def from_config(cls, cfg) -> "StepPolicy":
        return cls()

    def to(self, device: torch.device) -> "StepPolicy":
        """Place whatever state the policy keeps on the training device (before loading a checkpoint's state)."""
        return self

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        """Before the first step of an epoch."""

    def next_mode(self, epoch: int) -> str:
        """The mode of the step about to run."""
        return REGULAR

    def inputs(self, view0: Tensor, view1: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """The views the forward sees."""
        return view0, view1

    def capture(self, net: TwoViewMMTMNet):
        """A context manager around the forward; what it yields reaches `loss` as `features`."""
        return contextlib.nullcontext()

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        """The training loss: the run's task loss (mmtm.science.network.task_loss)."""
        return task_loss(self.task, logits0, logits1, y)

    def after_backward(self, net: TwoViewMMTMNet, logits0: Tensor, logits1: Tensor, y: Tensor, epoch: int) -> None:
        """After backward and the speed meter's measurement, before the optimizer step: may change .grad."""

    def observe(self, mode: str, d_speed: float, epoch: int) -> None:
        """Called after each step with the mode it ran in and the meter's d_speed after it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


STEP_HOOKS = ("inputs", "capture", "loss", "after_backward")  # the hooks that run inside a training step


def runs_in_cuda_graphs(policy: StepPolicy) -> bool:
    """Whether `policy`'s steps may be captured: the class that last set `cuda_graphs` set it True, and no class
    below it overrides a step hook (that class vouched for the hooks it could see, not for ones added later)."""
    mro = type(policy).__mro__
    declared = next(c for c in mro if "cuda_graphs" in vars(c))
    below = mro[:mro.index(declared)]
    return bool(declared.cuda_graphs) and not any(hook in vars(c) for c in below for hook in STEP_HOOKS)


class SeededPolicy(StepPolicy):
    """A policy that draws random numbers: its own torch.Generator, seeded from the run's seed and saved in
    state_dict, so a resumed run continues exactly and DDP ranks draw alike."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device) -> "SeededPolicy":
        # Draws happen on the device where they are used (noise the size of every conv gradient, say).
        self.generator = torch.Generator(device).manual_seed(self.seed)
        return self

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class VanillaPolicy(StepPolicy):
    name = "vanilla"
    cuda_graphs = True


class BalancedPolicy(StepPolicy):
    """Balanced multi-modal learning: after a regular step past warm-up, d_speed > α re-balances m0 (the slow
    modality) for the next Q steps, d_speed < −α re-balances m1; |d_speed| ≤ α or nan does nothing."""

    name = "balanced"
    rebalances = True
    cuda_graphs = True
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
    rebalances = True
    cuda_graphs = True  # it draws on the host, before the step

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
