"""The training engine: one loop for vanilla, balanced and random training (SPEC §3-4).

Read top to bottom: `fit` sets up a run (or resumes one), then per epoch calls `train_one_epoch`
and `evaluate`, writes one CSV row per epoch and atomic `last.pt` / `best.pt` checkpoints.
The three algorithms differ only in the step policy, which picks each step's fusion mode.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from loaders import two_view_loader
from loaders.dataset import DatasetError, check_view, open_dataset
from mmtm.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from mmtm.config import TrainConfig, to_dict
from mmtm.errors import UserError
from mmtm.evaluate import autocast_for, evaluate, to_model_layout
from mmtm.fusion import NORMAL, REBALANCED_BRANCH
from mmtm.network import TwoViewMMTMNet, fused_logits, two_head_loss
from mmtm.policy import make_policy
from mmtm.progress import TrainProgress
from mmtm.speed import SpeedMeter

STEP_FIELDS = ("step", "epoch", "mode", "loss", "s_m1_m0", "s_m0_m1", "d_speed")
EPOCH_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "val_acc_m0", "val_acc_m1", "val_loss",
                "d_speed", "s_m1_m0", "s_m0_m1", "rebalance_m0_steps", "rebalance_m1_steps", "seconds")


class NonFiniteLoss(UserError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible")
    return torch.device(name)


def build_network(cfg: TrainConfig, num_classes: int) -> TwoViewMMTMNet:
    return TwoViewMMTMNet(num_classes, width=cfg.width, ratio=cfg.mmtm_ratio, gate=cfg.gate)


def check_dataset_matches(data: str, classes: list[str], views) -> None:
    ds = open_dataset(data)
    if ds.classes != list(classes):
        raise DatasetError(f"{data}: classes differ from the checkpoint's ({len(ds.classes)} vs {len(classes)} classes)")
    for v in views:
        check_view(v)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local)


@dataclass
class Trainer:
    """Everything a step needs, and everything a checkpoint holds."""
    cfg: TrainConfig
    net: TwoViewMMTMNet
    model: torch.nn.Module            # `net`, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    policy: object
    meter: SpeedMeter
    device: torch.device
    amp: bool
    channels_last: bool
    ddp: Distributed
    step: int = 0
    epoch: int = 0                    # the next epoch to run
    best_val_acc: float = -1.0
    full_acc_epochs: int = 0          # epochs that reached 100% train accuracy (early stop, SPEC §5)

    def state_dict(self, classes: list[str]) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
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
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.best_val_acc, self.full_acc_epochs = ckpt["best_val_acc"], ckpt["full_acc_epochs"]


def build_trainer(cfg: TrainConfig, num_classes: int, device: torch.device, ddp: Distributed) -> Trainer:
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, num_classes).to(device)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model: torch.nn.Module = net
    if ddp.world_size > 1:
        # Re-balancing steps leave one excitation layer per MMTM without a gradient.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.policy != "vanilla")
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    policy_kw = {"balanced": {"alpha": cfg.alpha, "rebalance_steps": cfg.rebalance_steps,
                              "warmup_epochs": cfg.warmup_epochs},
                 "random": {"warmup_epochs": cfg.warmup_epochs, "seed": cfg.seed},
                 "vanilla": {}}[cfg.policy]
    return Trainer(cfg, net, model, optimizer, scheduler, make_policy(cfg.policy, **policy_kw),
                   SpeedMeter(net.param_groups(), window=cfg.speed_window), device,
                   amp=cfg.amp == "auto" and device.type == "cuda", channels_last=channels_last, ddp=ddp)


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
    mine = torch.tensor([t.step, t.meter.d_speed, policy_digest], dtype=torch.float64, device=t.device)
    everyone = [torch.zeros_like(mine) for _ in range(t.ddp.world_size)]
    dist.all_gather(everyone, mine)
    if any(not torch.allclose(other, mine, equal_nan=True) for other in everyone):
        raise RuntimeError(f"ranks disagree on step/d_CLS/policy after epoch {t.epoch}: {everyone}")


def _keep_only_slow_branch_grads(t: Trainer, mode: str) -> None:
    """SPEC §4 option: a re-balancing step updates only the slow modality's own branch θ0 or θ1."""
    slow = set(map(id, t.net.branch_params(REBALANCED_BRANCH[mode])))
    for p in t.net.parameters():
        if id(p) not in slow:
            p.grad = None


def train_step(t: Trainer, batch, mode: str) -> tuple[float, int]:
    """One optimizer step in the given fusion mode; returns (loss, correct predictions of ŷ)."""
    x0 = to_model_layout(batch.view0, t.channels_last)
    x1 = to_model_layout(batch.view1, t.channels_last)
    t.optimizer.zero_grad(set_to_none=True)
    with autocast_for(t.device, t.amp):
        logits0, logits1 = t.model(x0, x1, mode=mode)
    logits0, logits1 = logits0.float(), logits1.float()
    loss = two_head_loss(logits0, logits1, batch.label)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise NonFiniteLoss(f"loss is {loss_value} at step {t.step} (epoch {t.epoch}); training stopped, "
                            f"the last good checkpoint is kept in {t.cfg.out}/last.pt")
    loss.backward()
    regular = mode == NORMAL
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
        steps_log.append({"step": t.step, "epoch": t.epoch, "mode": _mode_name(mode), "loss": loss,
                          "s_m1_m0": s_m1_m0, "s_m0_m1": s_m0_m1, "d_speed": d_speed})
        t.step += 1
        progress.step(loss=loss, acc=correct / n, d_speed=d_speed)
    if t.ddp.world_size > 1:
        dist.all_reduce(loss_sum)
    total_loss, correct, n = loss_sum.tolist()
    return {"train_loss": total_loss / max(n, 1), "train_acc": correct / max(n, 1),
            "rebalance_m0_steps": counts["rebalance_m0"], "rebalance_m1_steps": counts["rebalance_m1"]}


def _mode_name(mode: str) -> str:
    return "regular" if mode == NORMAL else mode


class RunFiles:
    """steps.csv, epochs.csv and config.json of a run folder (written by rank 0 only)."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self.steps, self.epochs = out / "steps.csv", out / "epochs.csv"

    def start(self, cfg: TrainConfig, resume_epoch: int | None) -> None:
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        for path, fields in ((self.steps, STEP_FIELDS), (self.epochs, EPOCH_FIELDS)):
            # Rows written after the last checkpoint (a crash mid-epoch) are dropped: the epoch is re-run.
            rows = []
            if resume_epoch is not None and path.exists():
                with path.open(newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < resume_epoch]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

    def append(self, path: Path, fields, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def fit(cfg: TrainConfig, *, resume: bool = False, progress: TrainProgress | None = None) -> dict:
    """Train a run from scratch or resume it from `RUN/last.pt`; returns the last epoch's row."""
    ddp = setup_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ddp.world_size > 1:
        device = torch.device("cuda", ddp.local_rank)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ckpt = None
    if resume:
        if not last_path.is_file():
            raise UserError(f"{last_path}: nothing to resume (no last.pt); start the run without --resume")
        ckpt = load_checkpoint(last_path)
    elif last_path.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    dataset = open_dataset(cfg.data)
    classes = list(ckpt["classes"]) if ckpt else dataset.classes
    check_dataset_matches(cfg.data, classes, cfg.views)
    if dataset.meta["counts"].get("val", 0) == 0:
        raise DatasetError(f"{cfg.data}: no validation objects; re-run `mmtm prep` with --val-fraction > 0")

    t = build_trainer(cfg, len(classes), device, ddp)
    if ckpt:
        if ckpt.get("world_size", 1) != ddp.world_size:
            raise UserError(f"{last_path} was written by {ckpt.get('world_size', 1)} processes; "
                            f"resume with the same number (now {ddp.world_size})")
        t.load_state_dict(ckpt)
    files = RunFiles(out, ddp.main)
    files.start(cfg, t.epoch if ckpt else None)

    common = dict(views=tuple(cfg.views), batch_size=cfg.batch_size, seed=cfg.seed, backend=cfg.loader,
                  device=device, rank=ddp.rank, world_size=ddp.world_size, num_threads=cfg.num_threads)
    train_loader = two_view_loader(cfg.data, "train", train=True, **common)
    val_loader = two_view_loader(cfg.data, "val", train=False, **common)
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
            val = evaluate(t.net, val_loader, amp=t.amp, channels_last=t.channels_last)
            lr = t.optimizer.param_groups[0]["lr"]
            t.scheduler.step(train["train_loss"])  # SPEC §5: plateau on the training loss
            t.full_acc_epochs += int(train["train_acc"] >= 1.0)
            row = {"epoch": t.epoch, "lr": lr, **train, "val_acc": val["acc"], "val_acc_m0": val["acc_m0"],
                   "val_acc_m1": val["acc_m1"], "val_loss": val["loss"], "d_speed": t.meter.d_speed,
                   "s_m1_m0": t.meter.s_m1_m0, "s_m0_m1": t.meter.s_m0_m1,
                   "seconds": round(time.perf_counter() - started, 3)}
            files.append(files.steps, STEP_FIELDS, steps_log)
            files.append(files.epochs, EPOCH_FIELDS, [row])
            is_best = val["acc"] > t.best_val_acc
            t.best_val_acc = max(t.best_val_acc, val["acc"])
            t.epoch += 1
            if ddp.main:
                state = t.state_dict(classes)
                if is_best:
                    save_checkpoint(state, best_path)
                save_checkpoint(state, last_path)
            progress.end_epoch(row)
    if ddp.world_size > 1:
        dist.barrier()
    return row
