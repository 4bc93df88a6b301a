"""The training loop: one loop for every training policy (docs/science.md §3-4 and the remedies in mmtm/methods/).

Read top to bottom: `fit` sets up a run (or resumes one), then per epoch calls `train_one_epoch`
and `evaluate`, writes one CSV row per epoch and atomic `last.pt` / `best.pt` checkpoints.
The algorithms differ only in the policy, whose hooks `step_on_device` calls (mmtm/training/policy.py).
"""
from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mmtm.loaders.dataset import DatasetError, open_dataset
from mmtm.loaders.device import resolve_device
from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import two_view_loader
from mmtm.loaders.output import check_output_folder
from mmtm.training.checkpoint import save_checkpoint
from mmtm.training.config import TrainConfig, to_dict
from mmtm.training.cuda_graphs import GraphedSteps
from mmtm.analysis.eval_cur import evaluate_cur
from mmtm.analysis.evaluate import evaluate
from mmtm.science.fusion import REBALANCED_BRANCH, REGULAR, STEP_MODES
from mmtm.training.hardware import Compute, Distributed, graph_steps, setup_distributed
from mmtm.science.network import TwoViewMMTMNet, build_network, fused_logits
from mmtm.training.policy import EpochContext, StepPolicy, runs_in_cuda_graphs
from mmtm.training.progress import TrainProgress
from mmtm.training.registry import make_policy
from mmtm.training.run import RunFolder, check_dataset_matches, check_resumable, load_run_checkpoint
from mmtm.training.schedule import make_scheduler, step_schedule
from mmtm.science.speed import READOUT, SpeedMeter
from mmtm.training.tensorboard_log import TensorBoardLog


class NonFiniteLoss(UserError):
    pass


@dataclass
class Trainer:
    """Everything a step needs, and everything a checkpoint holds."""
    cfg: TrainConfig
    net: TwoViewMMTMNet
    model: torch.nn.Module            # `net`, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LRScheduler
    policy: StepPolicy
    meter: SpeedMeter
    compute: Compute
    ddp: Distributed
    graphs: GraphedSteps | None = None  # CUDA-graph steps (one GPU, a policy that only chooses modes)
    step: int = 0
    epoch: int = 0                    # the next epoch to run
    best_val_acc: float = -1.0
    full_acc_epochs: int = 0          # epochs that reached 100% train accuracy (early stop, docs/science.md §5)

    def state_dict(self, classes: list[str]) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.compute.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.compute.device)
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:
            group["lr"] = float(group["lr"])  # a device tensor in graph mode; the file holds the number
        return {
            "model": self.net.state_dict(), "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(), "policy": self.policy.state_dict(),
            "speed": self.meter.state_dict(), "rng": rng, "step": self.step, "epoch": self.epoch,
            "best_val_acc": self.best_val_acc, "full_acc_epochs": self.full_acc_epochs,
            "config": to_dict(self.cfg), "classes": list(classes), "world_size": self.ddp.world_size,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Load a checkpoint into the tensors this trainer already holds (values copied in place, in this run's
        device and memory layout): a CUDA graph captured before keeps updating the same tensors, and a checkpoint
        written on another device or in another layout (a CPU run resumed on a GPU) is converted, not mixed in."""
        self.net.load_state_dict(ckpt["model"])
        _load_optimizer_in_place(self.optimizer, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.policy.load_state_dict(ckpt["policy"])
        self.meter.load_state_dict(ckpt["speed"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.compute.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.compute.device)
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.best_val_acc, self.full_acc_epochs = ckpt["best_val_acc"], ckpt["full_acc_epochs"]


def _make_optimizer_state(optimizer: torch.optim.SGD) -> None:
    """Every momentum buffer made before the first step (zeros: SGD's first update from a zero buffer equals the
    one it makes when it creates the buffer, bit for bit), so every step updates one complete, fixed set of
    tensors. Without this a first step that leaves some parameters without a gradient (a re-balancing step)
    creates only part of the buffers, which fused SGD refuses at the next step and a CUDA graph would not see."""
    for group in optimizer.param_groups:
        if group["momentum"] != 0:
            for p in group["params"]:
                buffer = torch.zeros_like(p, memory_format=torch.preserve_format)
                optimizer.state[p].setdefault("momentum_buffer", buffer)


# How this run's optimizer computes, not state: a checkpoint's groups keep the flags of the run that wrote it (a CPU
# run's fused=None would turn a GPU run's fused SGD into the foreach path, a host sync per step and no CUDA graphs).
RUN_OPTIMIZER_FLAGS = ("fused", "foreach", "differentiable")


def _load_optimizer_in_place(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`optimizer.load_state_dict`, then the loaded values copied into the state tensors and learning-rate tensors
    held before (a state entry the checkpoint lacks, a buffer never used there, becomes zeros); each group keeps
    this run's RUN_OPTIMIZER_FLAGS."""
    held = {p: dict(optimizer.state[p]) for group in optimizer.param_groups for p in group["params"]}
    lrs = [group["lr"] for group in optimizer.param_groups]
    flags = [{k: group[k] for k in RUN_OPTIMIZER_FLAGS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept)
    for p, before in held.items():
        state = optimizer.state[p]
        for key, tensor in before.items():
            if isinstance(tensor, Tensor):
                loaded = state.get(key)
                if isinstance(loaded, Tensor):
                    tensor.copy_(loaded)
                else:
                    tensor.zero_()
                state[key] = tensor
    for group, lr in zip(optimizer.param_groups, lrs):
        if isinstance(lr, Tensor):
            lr.fill_(float(group["lr"]))
            group["lr"] = lr


def build_trainer(cfg: TrainConfig, num_classes: int, device: torch.device, ddp: Distributed) -> Trainer:
    torch.manual_seed(cfg.seed)
    compute = Compute.of(device, amp=cfg.amp, channels_last=cfg.channels_last)
    net = compute.place(build_network(cfg, num_classes))
    policy = make_policy(cfg).to(device)
    model: torch.nn.Module = net
    if ddp.world_size > 1:
        # Re-balancing steps leave one excitation layer per MMTM without a gradient.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=policy.rebalances)
    cuda = device.type == "cuda"
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=cuda or None)  # fused: the faster update on CUDA
    _make_optimizer_state(optimizer)
    if cuda:
        lr_on_device(optimizer, device)
    meter = SpeedMeter(net.param_groups(), window=cfg.speed_window, signal=cfg.speed_signal,
                       signal_from_epoch=cfg.speed_from_epoch)
    t = Trainer(cfg, net, model, optimizer, make_scheduler(optimizer, cfg), policy, meter, compute, ddp)
    if graph_steps(cfg.cuda_graphs, device, ddp.world_size, runs_in_cuda_graphs(policy)):
        use_cuda_graphs(t)
    elif cfg.cuda_graphs == "auto" and cuda and ddp.main:
        why = "DDP runs eager steps" if ddp.world_size > 1 else f"policy {policy.name} runs eager steps"
        print(f"note: CUDA graphs off ({why})", file=sys.stderr)
    return t


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """The learning rate as a float32 device tensor that the schedules fill in place: what graph replays read, and
    on CUDA what eager steps read too (fused SGD takes it on the device), so both compute the same learning rates
    (a schedule multiplies the float32 value it finds)."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def use_cuda_graphs(t: Trainer, graphed_steps: Callable[..., GraphedSteps] = GraphedSteps) -> None:
    """Run the trainer's steps as CUDA graphs (`graphed_steps`: the CPU twin in tests)."""
    lr_on_device(t.optimizer, t.compute.device)
    t.graphs = graphed_steps(lambda view0, view1, y, mode: step_on_device(t, view0, view1, y, mode), t.compute.device)


@torch.no_grad()
def recompute_bn_stats(net: torch.nn.Module, batches, compute: Compute, limit: int) -> None:
    """Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): every BatchNorm's
    running mean and variance replaced by their plain average over the first `limit` batches, computed with the
    current weights. The running averages lag behind weights that change every step, and what evaluation then
    measures swings from epoch to epoch. Only the BatchNorm layers run in training mode for this pass, so the MMTM
    running gate means do not move; training itself, which normalises by batch statistics, is unchanged. In place,
    so tensors a CUDA graph holds stay its own; averaged over ranks under DDP. (torch.optim.swa_utils.update_bn does
    this for one-input models with the whole model in training mode.)"""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    was_training = net.training
    net.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    for i, batch in enumerate(batches):
        if i == limit:
            break
        with compute.autocast():
            net(compute.layout(batch.view0), compute.layout(batch.view1))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        if dist.is_available() and dist.is_initialized():
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= dist.get_world_size()
    net.train(was_training)


def _sync_running_gates(t: Trainer) -> None:
    """Average each MMTM's running gate means over ranks so re-balancing uses one constant everywhere."""
    if t.ddp.world_size == 1:
        return
    for m in t.net.mmtms:
        for buf in (m.running_gate_a, m.running_gate_b):
            dist.all_reduce(buf)
            buf /= t.ddp.world_size


def state_digest(state) -> int:
    """A checksum of the values in a policy's state (tensors, numbers, strings, lists, dicts): the same on every rank
    when the values are, whatever device or memory layout a tensor has (a repr would name the device)."""
    crc = 0

    def feed(x) -> None:
        nonlocal crc
        if isinstance(x, Tensor):
            t = x.detach().to("cpu", copy=False).contiguous()
            crc = zlib.crc32(f"tensor {t.dtype} {tuple(t.shape)}".encode(), crc)
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
        elif isinstance(x, dict):
            for key in sorted(x, key=str):
                feed(str(key))
                feed(x[key])
        elif isinstance(x, (list, tuple)):
            crc = zlib.crc32(f"seq {len(x)}".encode(), crc)
            for item in x:
                feed(item)
        else:
            crc = zlib.crc32(repr(x).encode(), crc)

    feed(state)
    return crc


def _check_ranks_agree(t: Trainer) -> None:
    """The CLS meter and the step policy must be identical on every rank (grads are all-reduced)."""
    if t.ddp.world_size == 1:
        return
    policy_digest = state_digest(t.policy.state_dict())
    d_speed = t.meter.values()["d_speed"]
    mine = torch.tensor([t.step, d_speed, policy_digest], dtype=torch.float64, device=t.compute.device)
    everyone = [torch.zeros_like(mine) for _ in range(t.ddp.world_size)]
    dist.all_gather(everyone, mine)
    if any(not torch.allclose(other, mine, equal_nan=True) for other in everyone):
        raise RuntimeError(f"ranks disagree on step/d_speed/policy after epoch {t.epoch}: {everyone}")


def _keep_only_slow_branch_grads(t: Trainer, mode: str) -> None:
    """docs/science.md §4 option: a re-balancing step updates only the slow modality's own branch θ0 or θ1."""
    slow = set(map(id, t.net.branch_params(REBALANCED_BRANCH[mode])))
    for p in t.net.parameters():
        if id(p) not in slow:
            p.grad = None


def step_on_device(t: Trainer, view0: Tensor, view1: Tensor, y: Tensor, mode: str) -> Tensor:
    """One optimizer step in the given fusion mode, all on the device (what a CUDA graph captures): returns
    float64 [2 + len(READOUT)]: loss, correct predictions of ŷ, and the speed meter's READOUT."""
    policy = t.policy
    t.optimizer.zero_grad(set_to_none=True)
    view0, view1 = policy.inputs(view0, view1, t.epoch)
    with policy.capture(t.net) as features, t.compute.autocast():
        logits0, logits1 = t.model(t.compute.layout(view0), t.compute.layout(view1), mode=mode)
    logits0, logits1 = logits0.float(), logits1.float()
    loss = policy.loss(logits0, logits1, y, features, t.epoch)
    loss.backward()
    regular = mode == REGULAR
    if regular:
        t.meter.update(t.meter.measure())  # μ of the loss's gradient, before any policy changes it (docs/science.md §3)
    elif t.cfg.rebalance_params == "slow":
        _keep_only_slow_branch_grads(t, mode)
    policy.after_backward(t.net, logits0, logits1, y, t.epoch)
    t.optimizer.step()
    if regular:
        _sync_running_gates(t)
    correct = (fused_logits(logits0, logits1).argmax(1) == y).sum()
    return torch.cat([torch.stack([loss.detach().double(), correct.double()]), t.meter.readout()])


def launch_step(t: Trainer, batch, mode: str) -> Tensor:
    """Start one training step (a graph replay where the trainer has graphs); returns its readout on the device:
    loss, correct, and the speed meter's READOUT. Nothing waits for the device here."""
    step = t.graphs or (lambda *args: step_on_device(t, *args))
    return step(batch.view0, batch.view1, batch.label, mode)


def read_step(t: Trainer, readout: Tensor, mode: str) -> dict:
    """A launched step's values, read in one copy: the step's only host sync."""
    out = dict(zip(("loss", "correct", *READOUT), readout.tolist()))
    if not math.isfinite(out["loss"]):
        last = RunFolder(t.cfg.out).last
        kept = f"the last good checkpoint is kept in {last}" if last.exists() else "no epoch had finished"
        raise NonFiniteLoss(f"loss is {out['loss']} at step {t.step} (epoch {t.epoch}); training stopped, {kept}")
    if mode != REGULAR:
        out["d_speed_step"] = math.nan  # a re-balancing step is not measured
    return out


def train_step(t: Trainer, batch, mode: str) -> dict:
    """One training step, launched and read."""
    return read_step(t, launch_step(t, batch, mode), mode)


def train_one_epoch(t: Trainer, loader, steps_log: list[dict], progress: TrainProgress) -> dict:
    t.net.train()
    t.meter.start_epoch(t.epoch)
    sums = torch.zeros(5, dtype=torch.float64)  # loss*n, correct, n, loss*n of regular steps, n of regular steps
    counts = {"rebalance_m0": 0, "rebalance_m1": 0}
    n_batches = len(loader) if t.cfg.max_steps_per_epoch is None else min(len(loader), t.cfg.max_steps_per_epoch)
    progress.start_epoch(t.epoch, n_batches)
    replays = dict(t.graphs.replays) if t.graphs is not None else {}
    batches = iter(loader)
    batch = next(batches, None) if n_batches else None
    taken = 0
    while batch is not None:
        mode = t.policy.next_mode(t.epoch)
        readout = launch_step(t, batch, mode)
        taken += 1
        # The next batch is asked for while the device runs this step, so the loader's host work overlaps it;
        # only then does the host wait, once, for this step's values (which choose the next step's mode).
        following = next(batches, None) if taken < n_batches else None
        out = read_step(t, readout, mode)
        t.policy.observe(mode, out["d_speed_signal"], t.epoch)
        counts[mode] = counts.get(mode, 0) + 1
        n = batch.label.numel()
        regular = mode == REGULAR
        sums += torch.tensor([out["loss"] * n, out["correct"], n, out["loss"] * n * regular, n * regular],
                             dtype=torch.float64)
        steps_log.append({"step": t.step, "epoch": t.epoch, "mode": mode, "loss": out["loss"],
                          **{k: out[k] for k in READOUT}})
        t.step += 1
        progress.step(loss=out["loss"], acc=out["correct"] / n, d_speed=out["d_speed"])
        batch = following
    if t.ddp.world_size > 1:
        dist.all_reduce(sums)
    total_loss, correct, n, regular_loss, n_regular = sums.tolist()
    return {"train_loss": total_loss / max(n, 1),
            "train_loss_regular": regular_loss / n_regular if n_regular else math.nan,
            "train_acc": correct / max(n, 1),
            "rebalance_m0_steps": counts["rebalance_m0"], "rebalance_m1_steps": counts["rebalance_m1"],
            **_graph_replays(t, replays)}


def _graph_replays(t: Trainer, before: dict[str, int]) -> dict[str, int]:
    """Steps of each mode that ran as CUDA-graph replays since the replay counts were `before` (epochs.csv's
    *_graph_steps); 0 without graphs."""
    now = t.graphs.replays if t.graphs is not None else {}
    return {f"{mode}_graph_steps": now.get(mode, 0) - before.get(mode, 0) for mode in STEP_MODES}


def fit(cfg: TrainConfig, *, resume: bool = False, progress: TrainProgress | None = None) -> dict:
    """Train a run from scratch or resume it from `RUN/last.pt`; returns the last epoch's row.

    The settings, the dataset, its split files and a resumed run's checkpoint are all checked before the run
    folder is written; bad input that stops a new run before its first checkpoint takes back what it wrote."""
    run = RunFolder(cfg.out)
    with run.undone_on_bad_input():
        return _fit(cfg, run, resume=resume, progress=progress)


def _resume_note(run: RunFolder, t: Trainer, cfg: TrainConfig) -> str:
    """Where a resumed run goes on from, or that it has nothing left to train."""
    if cfg.early_stop_epochs and t.full_acc_epochs >= cfg.early_stop_epochs:
        return (f"note: {run.root} is complete: it stopped early after epoch {t.epoch - 1} ({cfg.early_stop_epochs} "
                "epochs at 100% train accuracy); nothing to train")
    if t.epoch >= cfg.epochs:
        return f"note: {run.root} is complete: all {cfg.epochs} epochs are trained; nothing to train"
    return f"note: resuming {run.root} from {run.last.name} after epoch {t.epoch - 1} ({t.epoch} of {cfg.epochs} done)"


def _fit(cfg: TrainConfig, run: RunFolder, *, resume: bool, progress: TrainProgress | None) -> dict:
    if cfg.cpu_threads is not None:  # on the CPU the results depend on it, so a run fixes it
        torch.set_num_threads(cfg.cpu_threads)
    ddp = setup_distributed(cfg.device)
    device = ddp.local_device(resolve_device(cfg.device))
    check_output_folder(run.root)
    ckpt, classes = None, None
    if resume:
        if not run.last.is_file():
            raise UserError(f"{run.last}: nothing to resume (no last.pt); start the run without --resume")
        ckpt, saved, classes = load_run_checkpoint(run.last)
        check_resumable(run.last, saved, cfg)
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
    more_loaders = {("val", False): val_loader}

    def loader(split: str, train: bool):
        """The loaders a policy asks for, made once (a policy may read the splits before an epoch). Their DALI
        source runs in this thread: a pass that stops early would otherwise restart worker processes."""
        if (split, train) not in more_loaders:
            more_loaders[split, train] = two_view_loader(cfg.data, split, train=train, source_workers=0, **common)
        return more_loaders[split, train]

    context = EpochContext(t.net, t.compute, ddp, loader)
    progress = progress or TrainProgress(enabled=ddp.main, total_epochs=cfg.epochs, single_view=cfg.single_view)
    tb = TensorBoardLog(run.tb, enabled=ddp.main, purge_step=t.step if ckpt else None, hparams=to_dict(cfg))
    if ckpt:
        progress.note(_resume_note(run, t, cfg))

    row: dict = {}
    with progress:
        while t.epoch < cfg.epochs:
            if cfg.early_stop_epochs and t.full_acc_epochs >= cfg.early_stop_epochs:
                break
            started = time.perf_counter()
            t.policy.start_epoch(t.epoch, context)
            train_loader.set_epoch(t.epoch)
            steps_log: list[dict] = []
            train = train_one_epoch(t, train_loader, steps_log, progress)
            if cfg.precise_bn:
                bn_loader = loader("train", True)
                bn_loader.set_epoch(t.epoch)
                recompute_bn_stats(t.net, bn_loader, t.compute, cfg.precise_bn)
            _check_ranks_agree(t)
            val = evaluate(t.net, val_loader, t.compute.fp32())  # selects best.pt: no bf16 flips
            lr = float(t.optimizer.param_groups[0]["lr"])
            step_schedule(t.scheduler, train, cfg)
            t.full_acc_epochs += int(train["train_acc"] >= 1.0)
            speed = t.meter.values()
            row = {"epoch": t.epoch, "lr": lr, **train, "val_acc": val["acc"], "val_acc_m0": val["acc_m0"],
                   "val_acc_m1": val["acc_m1"], "val_loss": val["loss"], "d_speed": speed["d_speed"],
                   "s_m1_m0": speed["s_m1_m0"], "s_m0_m1": speed["s_m0_m1"], "d_speed_window": speed["d_speed_window"],
                   "regular_steps": t.meter.regular_steps, "seconds": round(time.perf_counter() - started, 3)}
            is_best = val["acc"] > t.best_val_acc
            t.best_val_acc = max(t.best_val_acc, val["acc"])
            t.epoch += 1
            if ddp.main:
                run.append_steps(steps_log)
                run.append_epoch(row)
                tb.epoch(steps_log, row, t.step)
                state = t.state_dict(classes)
                if is_best:
                    save_checkpoint(state, run.best)
                save_checkpoint(state, run.last)
            progress.end_epoch(row)
    tb.close()
    if cfg.single_view is not None and ddp.main:  # a single-view baseline's result is its test accuracy
        for which in ("best", "last"):
            evaluate_cur(run.root, checkpoint=which)
    if ddp.world_size > 1:
        dist.barrier()
    return row
