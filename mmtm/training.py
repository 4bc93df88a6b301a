"""The training loop: one loop for vanilla, balanced and random training (SPEC §3-4).

Read top to bottom: `fit` sets up a run (or resumes one), then per epoch calls `train_one_epoch`
and `evaluate`, writes one CSV row per epoch and atomic `last.pt` / `best.pt` checkpoints.
The algorithms differ only in the step policy, which picks each step's fusion mode.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from loaders.dataset import DatasetError, open_dataset
from loaders.device import resolve_device
from loaders.errors import UserError
from loaders.factory import two_view_loader
from loaders.output import check_output_folder
from mmtm.checkpoint import save_checkpoint
from mmtm.config import TrainConfig, to_dict
from mmtm.evaluate import evaluate
from mmtm.fusion import REBALANCED_BRANCH, REGULAR
from mmtm.hardware import Compute, Distributed, setup_distributed
from mmtm.network import TwoViewMMTMNet, build_network, fused_logits, two_head_loss
from mmtm.policy import StepPolicy, make_policy
from mmtm.progress import TrainProgress
from mmtm.run import RunFolder, check_dataset_matches, check_same_run, load_run_checkpoint
from mmtm.speed import SpeedMeter


class NonFiniteLoss(UserError):
    pass


@dataclass
class Trainer:
    """Everything a step needs, and everything a checkpoint holds."""
    cfg: TrainConfig
    net: TwoViewMMTMNet
    model: torch.nn.Module            # `net`, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    policy: StepPolicy
    meter: SpeedMeter
    compute: Compute
    ddp: Distributed
    step: int = 0
    epoch: int = 0                    # the next epoch to run
    best_val_acc: float = -1.0
    full_acc_epochs: int = 0          # epochs that reached 100% train accuracy (early stop, SPEC §5)

    def state_dict(self, classes: list[str]) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.compute.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.compute.device)
        return {
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "policy": self.policy.state_dict(),
            "speed": self.meter.state_dict(), "rng": rng, "step": self.step, "epoch": self.epoch,
            "best_val_acc": self.best_val_acc, "full_acc_epochs": self.full_acc_epochs,
            "config": to_dict(self.cfg), "classes": list(classes), "world_size": self.ddp.world_size,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.policy.load_state_dict(ckpt["policy"])
        self.meter.load_state_dict(ckpt["speed"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.compute.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.compute.device)
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.best_val_acc, self.full_acc_epochs = ckpt["best_val_acc"], ckpt["full_acc_epochs"]


def build_trainer(cfg: TrainConfig, num_classes: int, device: torch.device, ddp: Distributed) -> Trainer:
    torch.manual_seed(cfg.seed)
    compute = Compute.of(device, amp=cfg.amp, channels_last=cfg.channels_last)
    net = compute.place(build_network(cfg, num_classes))
    model: torch.nn.Module = net
    if ddp.world_size > 1:
        # Re-balancing steps leave one excitation layer per MMTM without a gradient.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.policy != "vanilla")
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    return Trainer(cfg, net, model, optimizer, scheduler, make_policy(cfg),
                   SpeedMeter(net.param_groups(), window=cfg.speed_window), compute, ddp)


def _sync_running_gates(t: Trainer) -> None:
    """Average each MMTM's running gate means over ranks so re-balancing uses one constant everywhere."""
    if t.ddp.world_size == 1:
        return
    for m in t.net.mmtms:
        for buf in (m.running_gate_a, m.running_gate_b):
            dist.all_reduce(buf)
            buf /= t.ddp.world_size


def _check_ranks_agree(t: Trainer) -> None:
    """The CLS meter and the step policy must be identical on every rank (grads are all-reduced)."""
    if t.ddp.world_size == 1:
        return
    policy_digest = zlib.crc32(repr(t.policy.state_dict()).encode())
    mine = torch.tensor([t.step, t.meter.d_speed, policy_digest], dtype=torch.float64, device=t.compute.device)
    everyone = [torch.zeros_like(mine) for _ in range(t.ddp.world_size)]
    dist.all_gather(everyone, mine)
    if any(not torch.allclose(other, mine, equal_nan=True) for other in everyone):
        raise RuntimeError(f"ranks disagree on step/d_speed/policy after epoch {t.epoch}: {everyone}")


def _keep_only_slow_branch_grads(t: Trainer, mode: str) -> None:
    """SPEC §4 option: a re-balancing step updates only the slow modality's own branch θ0 or θ1."""
    slow = set(map(id, t.net.branch_params(REBALANCED_BRANCH[mode])))
    for p in t.net.parameters():
        if id(p) not in slow:
            p.grad = None


def train_step(t: Trainer, batch, mode: str) -> tuple[float, int]:
    """One optimizer step in the given fusion mode; returns (loss, correct predictions of ŷ)."""
    t.optimizer.zero_grad(set_to_none=True)
    with t.compute.autocast():
        logits0, logits1 = t.model(t.compute.layout(batch.view0), t.compute.layout(batch.view1), mode=mode)
    logits0, logits1 = logits0.float(), logits1.float()
    loss = two_head_loss(logits0, logits1, batch.label)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise NonFiniteLoss(f"loss is {loss_value} at step {t.step} (epoch {t.epoch}); training stopped, "
                            f"the last good checkpoint is kept in {RunFolder(t.cfg.out).last}")
    loss.backward()
    regular = mode == REGULAR
    if regular:
        t.meter.update(t.meter.measure(), regular=True)  # μ right after backward, before the step (SPEC §3)
    elif t.cfg.rebalance_params == "slow":
        _keep_only_slow_branch_grads(t, mode)
    t.optimizer.step()
    if regular:
        _sync_running_gates(t)
    correct = int((fused_logits(logits0, logits1).argmax(1) == batch.label).sum())
    return loss_value, correct


def train_one_epoch(t: Trainer, loader, steps_log: list[dict], progress: TrainProgress) -> dict:
    t.net.train()
    loss_sum = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
    counts = {"rebalance_m0": 0, "rebalance_m1": 0}
    n_batches = len(loader) if t.cfg.max_steps_per_epoch is None else min(len(loader), t.cfg.max_steps_per_epoch)
    progress.start_epoch(t.epoch, n_batches)
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        mode = t.policy.next_mode(t.epoch)
        loss, correct = train_step(t, batch, mode)
        s_m1_m0, s_m0_m1, d_speed = t.meter.s_m1_m0, t.meter.s_m0_m1, t.meter.d_speed
        t.policy.observe(mode, d_speed, t.epoch)
        counts[mode] = counts.get(mode, 0) + 1
        n = batch.label.numel()
        loss_sum += torch.tensor([loss * n, correct, n], dtype=torch.float64)
        steps_log.append({"step": t.step, "epoch": t.epoch, "mode": mode, "loss": loss,
                          "s_m1_m0": s_m1_m0, "s_m0_m1": s_m0_m1, "d_speed": d_speed})
        t.step += 1
        progress.step(loss=loss, acc=correct / n, d_speed=d_speed)
    if t.ddp.world_size > 1:
        dist.all_reduce(loss_sum)
    total_loss, correct, n = loss_sum.tolist()
    return {"train_loss": total_loss / max(n, 1), "train_acc": correct / max(n, 1),
            "rebalance_m0_steps": counts["rebalance_m0"], "rebalance_m1_steps": counts["rebalance_m1"]}


def fit(cfg: TrainConfig, *, resume: bool = False, progress: TrainProgress | None = None) -> dict:
    """Train a run from scratch or resume it from `RUN/last.pt`; returns the last epoch's row.

    The settings, the dataset, its split files and a resumed run's checkpoint are all checked before the run
    folder is written; bad input that stops a new run before its first checkpoint takes back what it wrote."""
    run = RunFolder(cfg.out)
    with run.undone_on_bad_input():
        return _fit(cfg, run, resume=resume, progress=progress)


def _fit(cfg: TrainConfig, run: RunFolder, *, resume: bool, progress: TrainProgress | None) -> dict:
    ddp = setup_distributed(cfg.device)
    device = ddp.local_device(resolve_device(cfg.device))
    check_output_folder(run.root)
    ckpt, classes = None, None
    if resume:
        if not run.last.is_file():
            raise UserError(f"{run.last}: nothing to resume (no last.pt); start the run without --resume")
        ckpt, saved, classes = load_run_checkpoint(run.last)
        check_same_run(run.last, saved, cfg, "resume with the settings it was trained with, or start a new run")
        if ckpt.get("world_size", 1) != ddp.world_size:
            raise UserError(f"{run.last} was written by {ckpt.get('world_size', 1)} processes; "
                            f"resume with the same number (now {ddp.world_size})")
    elif run.last.exists():
        raise UserError(f"{run.root} already holds a run; pass --resume to continue it or choose another --out")

    dataset = open_dataset(cfg.data)
    classes = classes or dataset.classes
    check_dataset_matches(cfg.data, classes, cfg.views)
    if dataset.meta["counts"].get("val", 0) == 0:
        raise DatasetError(f"{cfg.data}: no validation objects; re-run `mmtm prep` with --val-fraction > 0")

    common = dict(views=tuple(cfg.views), batch_size=cfg.batch_size, seed=cfg.seed, backend=cfg.loader,
                  device=device, rank=ddp.rank, world_size=ddp.world_size, num_threads=cfg.num_threads)
    train_loader = two_view_loader(cfg.data, "train", train=True, **common)
    val_loader = two_view_loader(cfg.data, "val", train=False, **common)

    t = build_trainer(cfg, len(classes), device, ddp)
    if ckpt:
        t.load_state_dict(ckpt)
    if ddp.main:
        run.start(cfg, t.epoch if ckpt else None)
    progress = progress or TrainProgress(enabled=ddp.main, total_epochs=cfg.epochs)

    row: dict = {}
    with progress:
        while t.epoch < cfg.epochs:
            if cfg.early_stop_epochs and t.full_acc_epochs >= cfg.early_stop_epochs:
                break
            started = time.perf_counter()
            train_loader.set_epoch(t.epoch)
            steps_log: list[dict] = []
            train = train_one_epoch(t, train_loader, steps_log, progress)
            _check_ranks_agree(t)
            val = evaluate(t.net, val_loader, t.compute)
            lr = t.optimizer.param_groups[0]["lr"]
            t.scheduler.step(train["train_loss"])  # SPEC §5: plateau on the training loss
            t.full_acc_epochs += int(train["train_acc"] >= 1.0)
            row = {"epoch": t.epoch, "lr": lr, **train, "val_acc": val["acc"], "val_acc_m0": val["acc_m0"],
                   "val_acc_m1": val["acc_m1"], "val_loss": val["loss"], "d_speed": t.meter.d_speed,
                   "s_m1_m0": t.meter.s_m1_m0, "s_m0_m1": t.meter.s_m0_m1,
                   "seconds": round(time.perf_counter() - started, 3)}
            is_best = val["acc"] > t.best_val_acc
            t.best_val_acc = max(t.best_val_acc, val["acc"])
            t.epoch += 1
            if ddp.main:
                run.append_steps(steps_log)
                run.append_epoch(row)
                state = t.state_dict(classes)
                if is_best:
                    save_checkpoint(state, run.best)
                save_checkpoint(state, run.last)
            progress.end_epoch(row)
    if ddp.world_size > 1:
        dist.barrier()
    return row
