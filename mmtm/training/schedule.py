"""The learning-rate schedules, stepped once per epoch.

`plateau` (the paper's, docs/science.md §5): ReduceLROnPlateau on the training loss, as the official code sets it
(factor 0.3, patience 10, relative threshold 1e-3, min lr 1e-6). Option (a deviation from the official code):
`plateau_on="regular"` watches the mean loss of the epoch's regular steps only. Re-balancing steps have a much
higher loss, and their share differs between policies, so the official schedule (`"all"`) also reacts to how often a
policy re-balances, not only to how training goes.

`cosine` (this project's, the demo preset's): the learning rate falls from `lr` to `min_lr` along a half cosine over
the run's epochs, whatever the losses do. A run of a fixed number of epochs then ends converged, so that its last
checkpoint and its best-validation checkpoint agree and the last epochs' validation accuracy is steady; with the
plateau schedule and a short run the learning rate never falls, and validation accuracy swings between epochs.
"""
from __future__ import annotations

import torch

SCHEDULES = ("plateau", "cosine")
PLATEAU_ON = ("all", "regular")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold, threshold_mode="rel", min_lr=cfg.min_lr)


def step_schedule(scheduler, epoch_row: dict, cfg) -> None:
    """End of an epoch: the plateau schedule watches a training loss (keys of `train_one_epoch`'s result)."""
    if cfg.schedule == "cosine":
        scheduler.step()
    else:
        scheduler.step(epoch_row["train_loss"] if cfg.plateau_on == "all" else epoch_row["train_loss_regular"])
