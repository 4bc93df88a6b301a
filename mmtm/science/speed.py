"""Conditional learning speed (docs/science.md §3): per-step μ of the four parameter groups, their sums M, s and
d_speed.

Three views of d_speed, logged side by side (they answer different questions):
  cumulative  the paper's: M summed over every regular step since training began;
  step        one regular step alone: log10(μ_θ'0/μ_θ0) − log10(μ_θ'1/μ_θ1);
  window      M summed over the last K regular steps.
The step policy reads `signal`: by default the cumulative view, as the official code does; as options (deviations
from the official code) the cumulative view counted from a chosen epoch (after the warm-up spike, say) or the
windowed view.

Use per regular step: `meter.update(meter.measure())` right after backward (before optimizer.step); re-balancing
steps are not measured or counted. Call `meter.start_epoch(epoch)` before each epoch. All state lives in float64
tensors on the parameters' device and nothing here syncs with the host, so a training step reads everything it
logs with one copy of `meter.readout()`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtm.loaders.errors import UserError
from mmtm.science import formulas

GROUPS = ("theta0", "theta1", "fusion0", "fusion1")
SIGNALS = ("cumulative", "window")
# What `readout()` holds, in order.
READOUT = ("d_speed", "s_m1_m0", "s_m0_m1", "d_speed_step", "d_speed_window", "d_speed_signal")
_T0, _T1, _F0, _F1 = range(4)


def _views(M: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(d_speed, s(m1|m0), s(m0|m1)) of group sums M [..., 4] ordered as GROUPS."""
    s_m1_m0 = formulas.conditional_speed(M[..., _F0], M[..., _T0])
    s_m0_m1 = formulas.conditional_speed(M[..., _F1], M[..., _T1])
    return formulas.d_speed(s_m1_m0, s_m0_m1), s_m1_m0, s_m0_m1


class SpeedMeter:
    def __init__(self, groups: dict[str, list[nn.Parameter]], *, window: int = 100, signal: str = "cumulative",
                 signal_from_epoch: int = 0, device: torch.device | str | None = None):
        missing = [g for g in GROUPS if g not in groups]
        if missing:
            raise ValueError(f"SpeedMeter needs the parameter groups {', '.join(missing)}")
        if window < 1 or signal not in SIGNALS or signal_from_epoch < 0:
            raise ValueError(f"bad speed meter settings: window {window}, signal {signal!r}, "
                             f"signal_from_epoch {signal_from_epoch}")
        self.groups = {name: list(groups[name]) for name in GROUPS}
        self.window, self.signal, self.signal_from_epoch = window, signal, signal_from_epoch
        if device is None:
            device = next((p.device for ps in self.groups.values() for p in ps), torch.device("cpu"))
        zeros = dict(dtype=torch.float64, device=device)
        self.M = torch.zeros(4, **zeros)                 # the paper's M, since training began
        self.M_from = torch.zeros(4, **zeros)            # since `signal_from_epoch`
        self.recent = torch.zeros(window, 4, **zeros)    # μ of the last K regular steps, a ring
        self.last = torch.zeros(4, **zeros)              # μ of the last regular step
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # regular steps so far
        self._counting = torch.zeros((), **zeros)        # 1 while the epoch counts towards M_from
        self._nan = torch.full((), float("nan"), **zeros)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self._counting.fill_(float(epoch >= self.signal_from_epoch))

    def measure(self) -> Tensor:
        """μ_g = Σ‖∇p‖² / Σ‖p‖² of every group from the current .grad, as float64 [4] in GROUPS order; nan for an
        empty group (a network without fusion parameters, whose d_speed is then nan)."""
        return torch.stack([formulas.mu((p.grad for p in self.groups[g]), self.groups[g]).double()
                            if self.groups[g] else self._nan for g in GROUPS])

    @torch.no_grad()
    def update(self, mu: Tensor) -> None:
        """Count one regular step's μ in every view."""
        self.M += mu
        self.M_from.add_(mu * self._counting)
        self.recent.index_copy_(0, (self.steps % self.window).view(1), mu.view(1, 4))
        self.last.copy_(mu)
        self.steps += 1

    @torch.no_grad()
    def readout(self) -> Tensor:
        """float64 [6] on the device, ordered as READOUT: the three views, s(·|·) of the cumulative one, and the
        value the policy reads. Before the first regular step every entry is nan."""
        d_speed, s_m1_m0, s_m0_m1 = _views(self.M)
        d_step = _views(self.last)[0]
        d_window = _views(self.recent.sum(0))[0]
        d_signal = d_window if self.signal == "window" else _views(self.M_from)[0]
        return torch.stack([d_speed, s_m1_m0, s_m0_m1, d_step, d_window, d_signal])

    def values(self) -> dict[str, float]:
        """`readout()` by name, on the host (one sync; the training step reads it together with its loss)."""
        return dict(zip(READOUT, self.readout().tolist()))

    @property
    def regular_steps(self) -> int:
        return int(self.steps)

    def state_dict(self) -> dict:
        return {"window": self.window, "signal": self.signal, "signal_from_epoch": self.signal_from_epoch,
                "M": self.M, "M_from": self.M_from, "recent": self.recent, "last": self.last, "steps": self.steps,
                "counting": self._counting}

    def load_state_dict(self, state: dict) -> None:
        settings = (state.get("window"), state.get("signal"), state.get("signal_from_epoch"))
        if settings != (self.window, self.signal, self.signal_from_epoch):
            raise UserError(f"the checkpoint's speed meter has window/signal/from-epoch {settings}, this run "
                            f"{(self.window, self.signal, self.signal_from_epoch)}; resume with the run's settings")
        for name, mine in (("M", self.M), ("M_from", self.M_from), ("recent", self.recent), ("last", self.last),
                           ("steps", self.steps), ("counting", self._counting)):
            mine.copy_(state[name])
