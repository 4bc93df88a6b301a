"""Graph steps against eager steps, in lock-step: the CPU twin of a CUDA graph, and the harness that trains an eager
and a graphed trainer side by side on the same batches and compares everything a step changes after every step.
tests/test_cuda_graphs.py runs it on the CPU through the twin (exact equality); tests/test_cuda.py runs the real
CUDA graphs (fp32, 1e-5 relative per tensor)."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

import torch

from mmtm.training.cuda_graphs import GraphedSteps
from mmtm.analysis.evaluate import evaluate
from mmtm.training.hardware import Distributed
from mmtm.training.loop import build_trainer, lr_on_device, train_step, use_cuda_graphs


class TwinGraph:
    """What a captured graph does on replay: the recorded step again, on the static inputs, into one readout."""

    def __init__(self, run):
        self.run, self.readout = run, torch.empty(0, dtype=torch.float64)

    def replay(self):
        self.readout.resize_(0).resize_as_(out := self.run()).copy_(out)


class TwinSteps(GraphedSteps):
    """GraphedSteps with the CPU twin of a graph; `fail` names modes whose capture raises (as a broken capture
    would); `held_at_capture` records the batch GraphedSteps holds while it captures."""

    def __init__(self, step, device=torch.device("cpu"), warmup=2, fail=()):
        super().__init__(step, device, warmup)
        self.captured, self.fail, self.held_at_capture = [], set(fail), []

    def _side_stream(self):
        return None

    def _eager(self, view0, view1, label, mode):
        return self.step(view0, view1, label, mode)

    def _record(self, mode):
        self.held_at_capture.append(self._held)
        if mode in self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\n(simulated)")
        self.captured.append(mode)
        graph = TwinGraph(lambda: self.step(*self.inputs, mode))
        return graph, graph.readout


def trainer(cfg, classes: int, graphs):
    """A trainer for `cfg` whose steps run through `graphs` (GraphedSteps with a test's warm-up count, or on the
    CPU its twin) where given; else as `cfg` says, with the learning rate a tensor on the CPU as eager steps have it
    on CUDA."""
    t = build_trainer(cfg, classes, torch.device(cfg.device), Distributed())
    if graphs is not None:
        use_cuda_graphs(t, graphs)
    elif t.compute.device.type == "cpu":
        lr_on_device(t.optimizer, t.compute.device)
    return t


def state(t) -> dict[str, torch.Tensor]:
    """Everything a step changes: weights and buffers (BN statistics, MMTM running gate means), SGD momentum
    buffers, the learning rate, and the CLS meter's sums."""
    names = {id(p): name for name, p in t.net.named_parameters()}
    out = {f"net.{k}": v for k, v in t.net.state_dict().items()}
    for p, s in t.optimizer.state.items():
        if "momentum_buffer" in s:
            out[f"momentum.{names[id(p)]}"] = s["momentum_buffer"]
    # in float32: what fused SGD computes with, from a float (eager) or a float32 device tensor (graphs)
    out["lr"] = torch.tensor(float(t.optimizer.param_groups[0]["lr"]), dtype=torch.float32)
    for key, value in t.meter.state_dict().items():
        if isinstance(value, torch.Tensor):  # the sums, counts and whether it counts yet
            out[f"meter.{key}"] = value
    return out


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float, where: str) -> None:
    """Per tensor: ‖a − b‖ ≤ rel·‖a‖ (rel = 0: equal)."""
    assert a.keys() == b.keys(), where
    for k in a:
        x, y = a[k].detach().double().cpu(), b[k].detach().double().cpu()
        if rel == 0:
            assert torch.equal(x, y), f"{where}: {k} differs"
        else:
            assert (x - y).norm() <= rel * x.norm() + 1e-30, f"{where}: {k} off by {float((x - y).norm() / x.norm())}"


def run_lockstep(cfg, classes: int, loader, val_loader, *, graphs, rel: float,
                 epochs: int = 3, roundtrip=lambda s: s, step_hook=None) -> list[set[str]]:
    """Train an eager and a graphed trainer on the same batches for `epochs` epochs; after every step compare
    their readouts and `state`. Between replays: a validation pass after each epoch, the learning rate dropped
    by the schedule after epoch 0, the checkpoint loaded back into the graphed trainer after its graphs were
    captured (epoch 1), and the graphed run resumed in a new trainer from its checkpoint (epoch 2). After every
    epoch: no capture failed, and every step of every mode past its warm-up was a replay.
    Returns, per epoch, the step modes that ran as replays."""
    eager = trainer(dataclasses.replace(cfg, cuda_graphs="off"), classes, None)
    graphed = trainer(cfg, classes, graphs)
    assert eager.graphs is None and graphed.graphs is not None
    ran: Counter[str] = Counter()  # steps per mode since the graphed trainer's GraphedSteps was made
    replayed = []
    for epoch in range(epochs):
        if epoch == 1:    # load after capture: the graphs must go on updating the tensors they hold
            graphed.load_state_dict(roundtrip(graphed.state_dict(["c"] * classes)))
        elif epoch == 2:  # resume: a new trainer, new graphs
            saved = roundtrip(graphed.state_dict(["c"] * classes))
            graphed = trainer(cfg, classes, graphs)
            graphed.load_state_dict(saved)
            ran = Counter()
        before = dict(graphed.graphs.replays)
        loader.set_epoch(epoch)
        for t in (eager, graphed):
            t.net.train()
            t.meter.start_epoch(epoch)
            t.epoch = epoch
        for i, batch in enumerate(loader):
            mode = eager.policy.next_mode(epoch)
            assert graphed.policy.next_mode(epoch) == mode
            outs = []
            for t in (eager, graphed):
                outs.append(train_step(t, batch, mode))
                t.policy.observe(mode, outs[-1]["d_speed_signal"], epoch)
            ran[mode] += 1
            where = f"epoch {epoch} step {i} ({mode})"
            assert_close({k: torch.tensor(v) for k, v in outs[0].items() if not math.isnan(v)},
                         {k: torch.tensor(v) for k, v in outs[1].items() if not math.isnan(v)}, rel, where)
            assert_close(state(eager), state(graphed), rel, where)
            if step_hook is not None:
                step_hook(eager, graphed)
        steps = graphed.graphs
        assert steps.off is None, f"epoch {epoch}: {steps.off}"
        assert dict(steps.replays) == {m: n - steps.warmup for m, n in ran.items() if n > steps.warmup}, \
            f"epoch {epoch}: replays {dict(steps.replays)} of steps {dict(ran)}"
        replayed.append({m for m, n in steps.replays.items() if n > before.get(m, 0)})
        vals = [evaluate(t.net, val_loader, t.compute.fp32()) for t in (eager, graphed)]
        assert vals[0]["acc"] == vals[1]["acc"], f"validation after epoch {epoch}"
        if epoch == 0:  # the schedule lowers the learning rate in place (patience 0, a loss that did not improve)
            for t in (eager, graphed):
                t.scheduler.step(math.inf)
            assert float(graphed.optimizer.param_groups[0]["lr"]) < cfg.lr
    return replayed
