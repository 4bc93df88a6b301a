"""The learning-rate schedule of SPEC §5: ReduceLROnPlateau on the training loss, as the official code sets it
(factor 0.3, patience 10, relative threshold 1e-3, min lr 1e-6), stepped once per epoch.

Option (a deviation from the official code): `plateau_on="regular"` watches the mean loss of the epoch's regular
steps only. Re-balancing steps have a much higher loss, and their share differs between policies, so the official
schedule (`"all"`) also reacts to how often a policy re-balances, not only to how training goes.
"""
from __future__ import annotations

import torch

PLATEAU_ON = ("all", "regular")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, threshold_mode="rel", min_lr=cfg.min_lr)


def plateau_loss(epoch_row: dict, cfg) -> float:
    """The loss the schedule watches at the end of an epoch (keys of `train_one_epoch`'s result)."""
    return epoch_row["train_loss"] if cfg.plateau_on == "all" else epoch_row["train_loss_regular"]
