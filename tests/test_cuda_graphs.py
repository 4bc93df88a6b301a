"""The CUDA-graph step machinery on the CPU, through a twin of the CUDA graph (tests/lockstep.py): the warm-up count
per mode, the static inputs and their checks, capture failures, loading after capture, the step loop's order,
fused SGD, and which policies are graphed; and through a stand-in for torch.cuda (tests/cuda_standin.py) the capture
itself: the run's device, empty graphs, what a failed capture leaves behind. tests/test_cuda.py runs the real thing.
Data are PIL-made (tests/conftest.py), so these run where the renderer's packages are missing."""
import pytest
import torch

from cuda_standin import StandInCuda
from lockstep import TwinSteps, assert_close, run_lockstep, state
from mmtm.loaders.factory import two_view_loader
from mmtm.training import loop as training
from mmtm.training.config import resolve
from mmtm.training.cuda_graphs import GraphedSteps
from mmtm.training.hardware import Distributed
from mmtm.methods.ogm_ge import OGMGEPolicy
from mmtm.training.policy import BalancedPolicy, FlippedPolicy, RandomPolicy, VanillaPolicy, runs_in_cuda_graphs
from mmtm.training.registry import POLICIES
from mmtm.training.loop import build_trainer, train_step, use_cuda_graphs

MODES = ["regular"] * 4 + ["rebalance_m0"] * 3 + ["regular", "rebalance_m1", "rebalance_m1", "rebalance_m1",
                                                  "regular", "rebalance_m0"]


@pytest.fixture(scope="module")
def pil_data(tmp_path_factory):
    """48 training objects at 32 px: 12 batches of 4 an epoch (tests/test_cuda.py's GPU data)."""
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("pil") / "data", size=32, per_split={"train": 16})


@pytest.fixture(scope="module")
def batches(pil_data):
    loader = two_view_loader(pil_data, "train", batch_size=4, train=True, seed=0, backend="torch",
                             device="cpu", num_threads=0)
    epochs = [list(loader) for _ in range(2)]  # each iteration is the next epoch
    return (epochs[0] + epochs[1])[:len(MODES)]


def run(batches, graphed: bool, fail=(), **overrides):
    t = build_trainer(resolve("demo", width=4, policy="balanced", lr=0.05, **overrides), 3, torch.device("cpu"),
                      Distributed())
    if graphed:
        use_cuda_graphs(t, lambda step, device: TwinSteps(step, device, fail=fail))
    rows = [train_step(t, b, mode) for b, mode in zip(batches, MODES)]
    return t, rows


def test_graph_steps_train_exactly_like_eager_steps(batches):
    eager, eager_rows = run(batches, graphed=False)
    graphed, graph_rows = run(batches, graphed=True)
    assert graph_rows == eager_rows  # loss, correct and every d_speed view, step by step
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    for key, value in state(eager).items():
        assert torch.equal(value.double(), state(graphed)[key].double()), key
    # each mode ran eagerly twice, then was captured once and replayed from then on
    assert graphed.graphs.captured == ["regular", "rebalance_m0", "rebalance_m1"]
    assert graphed.graphs.eager_runs == {"regular": 2, "rebalance_m0": 2, "rebalance_m1": 2}


def test_a_failed_capture_turns_graphs_off_for_the_run_with_one_note(batches, capsys):
    graphed, graph_rows = run(batches, graphed=True, fail={"rebalance_m0"})
    _, eager_rows = run(batches, graphed=False)
    assert graph_rows == eager_rows
    steps = graphed.graphs
    assert steps.captured == ["regular"] and steps.graphs == {}
    assert steps.off == "capture of rebalance_m0 steps failed (operation not permitted when stream is capturing " \
                        "(simulated))"
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: CUDA graphs off for the rest of the run: {steps.off}; every step runs eager"]
    # regular replayed from its third step until the failure at the 7th step; every step after it ran eager
    assert steps.replays == {"regular": 2}
    assert sum(steps.eager_runs.values()) == len(MODES) - 2


def test_the_previous_batch_is_held_while_a_mode_is_captured(batches):
    t, _ = run(batches[:3], graphed=True)  # regular is captured at the third step
    (held,) = t.graphs.held_at_capture
    assert held[0] is batches[1].view0 and held[2] is batches[1].label


def test_a_replay_reads_the_batch_copied_into_the_static_inputs(batches):
    t, _ = run(batches[:3], graphed=True)  # regular captured at the third step
    (view0, _, label) = t.graphs.inputs
    assert torch.equal(view0, batches[2].view0) and torch.equal(label, batches[2].label)
    assert view0.data_ptr() != batches[2].view0.data_ptr()  # a copy: the loader's tensor is not the graph's input


@pytest.mark.parametrize("change", ["smaller batch", "other dtype"])
def test_a_batch_unlike_the_captured_one_is_refused(batches, change):
    t, _ = run(batches[:3], graphed=True)
    b = batches[3]
    view0 = b.view0[:2] if change == "smaller batch" else b.view0.double()
    with pytest.raises(ValueError, match="graphs were captured for"):
        t.graphs(view0, b.view1, b.label, "regular")


def test_loading_a_checkpoint_after_capture_keeps_the_graphs_tensors(batches, roundtrip):
    t, _ = run(batches, graphed=True)
    other, _ = run(batches[:5], graphed=False)  # another state to load
    held = state(t)
    ptrs = {k: v.data_ptr() for k, v in held.items() if k != "lr"}
    lr = t.optimizer.param_groups[0]["lr"]
    t.load_state_dict(roundtrip(other.state_dict(["a", "b", "c"])))
    after = state(t)
    assert {k: v.data_ptr() for k, v in after.items() if k != "lr"} == ptrs  # the same tensors, new values
    assert t.optimizer.param_groups[0]["lr"] is lr
    for key, value in state(other).items():
        assert torch.equal(after[key].double(), value.double()), key


def test_a_checkpoint_of_another_memory_layout_is_converted_on_resume(batches, roundtrip):
    nchw, _ = run(batches[:5], graphed=False)
    cl = build_trainer(resolve("demo", width=4, policy="balanced", lr=0.05, channels_last="on"), 3,
                       torch.device("cpu"), Distributed())
    cl.load_state_dict(roundtrip(nchw.state_dict(["a", "b", "c"])))
    for p in cl.net.parameters():
        buf = cl.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride()  # the run's own layout, not the checkpoint's
    for key, value in state(nchw).items():
        assert torch.equal(state(cl)[key].double(), value.double()), key
    train_step(cl, batches[5], "regular")  # and it trains on


def test_the_step_loop_asks_for_the_next_batch_before_it_reads_a_step(batches, monkeypatch):
    events = []

    class Loader:
        def __len__(self):
            return 4

        def __iter__(self):
            for k in range(4):
                events.append(f"fetch {k}")
                yield batches[k]

    real_read = training.read_step

    def read(t, readout, mode):
        events.append(f"read {t.step}")
        return real_read(t, readout, mode)

    monkeypatch.setattr(training, "read_step", read)
    t = build_trainer(resolve("demo", width=4, lr=0.05), 3, torch.device("cpu"), Distributed())

    class Quiet:
        def start_epoch(self, *a): pass
        def step(self, **k): pass

    training.train_one_epoch(t, Loader(), [], Quiet())
    assert events == ["fetch 0", "fetch 1", "read 0", "fetch 2", "read 1", "fetch 3", "read 2", "read 3"]


def test_fused_sgd_takes_a_first_step_that_updates_only_part_of_the_network(batches):
    """The fused-SGD crash: a first step that leaves parameters without a gradient (a re-balancing step) used to
    create only some momentum buffers, and fused SGD raised TypeError at the next step. Fused SGD, given the
    unfused trainer's gradients step by step, also makes the same update."""
    cfg = resolve("demo", width=4, policy="random", warmup_epochs=0, lr=0.05)
    unfused, fused = (build_trainer(cfg, 3, torch.device("cpu"), Distributed()) for _ in range(2))
    for group in fused.optimizer.param_groups:
        group["fused"] = True
    for b, mode in zip(batches[:4], ["rebalance_m0", "regular", "rebalance_m1", "regular"]):
        train_step(unfused, b, mode)
        for p, q in zip(unfused.net.parameters(), fused.net.parameters()):
            q.grad = None if p.grad is None else p.grad.clone()
        fused.optimizer.step()
        assert_close(dict(unfused.net.named_parameters()), dict(fused.net.named_parameters()), rel=1e-6, where=mode)


def test_graphs_are_opt_in_and_a_step_hook_added_below_turns_them_off():
    assert [runs_in_cuda_graphs(p()) for p in (VanillaPolicy, BalancedPolicy, FlippedPolicy, RandomPolicy)] == \
        [True] * 4
    needs = {"umt": {"policy": "umt", "umt_teachers": "t0,t1"}}  # settings a policy cannot be made without
    assert {name for name, p in POLICIES.items()
            if runs_in_cuda_graphs(p.from_config(resolve("demo", **needs.get(name, {}))))} == \
        {"vanilla", "balanced", "random", "flipped"}
    assert not runs_in_cuda_graphs(OGMGEPolicy())

    class WithLoss(BalancedPolicy):
        def loss(self, *args):
            return super().loss(*args)

    class Vouched(WithLoss):
        cuda_graphs = True

    assert not runs_in_cuda_graphs(WithLoss()) and runs_in_cuda_graphs(Vouched())


def test_lockstep_harness_on_the_cpu_twin(pil_data, roundtrip):
    """The harness tests/test_cuda.py runs on a GPU, here on the twin: exact equality after every step over three
    epochs, with an LR drop, validation passes, a load after capture and a resume, and re-balancing steps that
    update the slow branch only."""
    cfg = resolve("demo", width=4, batch_size=4, policy="random", lr=0.05, schedule="plateau", plateau_patience=0,
                  loader="torch", device="cpu", num_threads=1, rebalance_params="slow", warmup_epochs=0)
    common = dict(batch_size=4, seed=0, backend="torch", device="cpu", num_threads=1)
    loader = two_view_loader(pil_data, "train", train=True, **common)
    val = two_view_loader(pil_data, "val", train=False, **common)
    replayed = run_lockstep(cfg, 3, loader, val, graphs=lambda step, device: TwinSteps(step, device, warmup=1), rel=0,
                            roundtrip=roundtrip)
    assert replayed == [{"regular", "rebalance_m0", "rebalance_m1"}] * 3


def test_loading_a_checkpoint_keeps_the_running_optimizers_flags(batches, roundtrip):
    """A checkpoint of a CPU run (fused None) loaded into a fused run (a GPU's): the loaded param groups would
    replace fused=True by None, and SGD would take its foreach path (on CUDA a sync per step and a failed capture)."""
    cpu_run, _ = run(batches[:2], graphed=False)
    t = build_trainer(resolve("demo", width=4, policy="balanced", lr=0.05), 3, torch.device("cpu"), Distributed())
    t.optimizer = torch.optim.SGD(t.net.parameters(), lr=0.05, momentum=t.cfg.momentum,
                                  weight_decay=t.cfg.weight_decay, fused=True)  # as build_trainer makes it on CUDA
    t.scheduler = training.make_scheduler(t.optimizer, t.cfg)
    training._make_optimizer_state(t.optimizer)
    flags = [{k: g[k] for k in ("fused", "foreach", "differentiable")} for g in t.optimizer.param_groups]
    saved = roundtrip(cpu_run.state_dict(["a", "b", "c"]))
    assert {g["fused"] for g in saved["optimizer"]["param_groups"]} == {None}
    t.load_state_dict(saved)
    assert [{k: g[k] for k in flags[0]} for g in t.optimizer.param_groups] == flags
    assert flags[0]["fused"] is True
    train_step(t, batches[2], "regular")  # the fused update on the loaded state


def steps_on(cuda: StandInCuda, device_index: int, work_on: int, warmup: int = 1) -> GraphedSteps:
    """GraphedSteps of a run on cuda:`device_index` whose step launches 5 kernels for cuda:`work_on`."""
    def step(view0, view1, label, mode):
        for _ in range(5):
            cuda.launch(work_on)
        return torch.zeros(4)

    return GraphedSteps(step, torch.device("cuda", device_index), warmup=warmup)


X, Y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)


def test_a_run_on_a_device_other_than_the_current_one_captures_its_step_there(monkeypatch):
    """--device cuda:1 while cuda:0 is current: the side stream on cuda:1, the capture there, every replay runs the
    step's kernels (a stream made on the current device captured nothing and replayed nothing)."""
    cuda = StandInCuda().install(monkeypatch)
    steps = steps_on(cuda, 1, work_on=1)
    for _ in range(4):
        steps(X, X, Y, "regular")
    assert steps.stream.device == torch.device("cuda", 1)
    assert steps.off is None and steps.replays == {"regular": 3} and steps.eager_runs == {"regular": 1}
    assert cuda.ran == {1: 4 * 5}  # one eager step and three replays, five kernels each
    assert cuda.device_index == 0 and cuda.current == cuda.default


def test_a_graph_that_captured_nothing_is_a_failed_capture(monkeypatch, capsys):
    cuda = StandInCuda().install(monkeypatch)
    steps = steps_on(cuda, 1, work_on=0)  # the step's work goes to another device's stream
    for _ in range(3):
        steps(X, X, Y, "regular")
    assert steps.off == ("capture of regular steps failed (the captured graph is empty: the step's work ran on "
                         "another device or stream)")
    assert capsys.readouterr().err.count("note: CUDA graphs off for the rest of the run") == 1
    assert steps.graphs == {} and steps.replays == {} and steps.eager_runs == {"regular": 3}
    assert cuda.ran == {0: 4 * 5}  # the two eager steps, the run that happened during the capture, the eager one
    assert set(cuda.pools.values()) == {"released"}
    assert cuda.device_index == 0 and cuda.current == cuda.default


def test_a_capture_that_raises_leaves_the_stream_and_the_pools_as_they_were(monkeypatch, capsys):
    """torch's capture_end raises without ending the pool's allocation, and torch.cuda.graph's exit then leaves the
    side stream current: after the failure the current stream is the one before, every pool (of the failed capture
    and of the graph captured before) is released, and every mode runs eager from then on."""
    cuda = StandInCuda().install(monkeypatch)
    steps = steps_on(cuda, 0, work_on=0)
    for mode in ("regular", "regular", "rebalance_m0"):
        steps(X, X, Y, mode)
    assert steps.replays == {"regular": 1}
    cuda.fail_capture = True
    for mode in ("rebalance_m0", "regular", "rebalance_m0"):
        steps(X, X, Y, mode)
    assert steps.off.startswith("capture of rebalance_m0 steps failed (CUDA error: operation not permitted")
    assert capsys.readouterr().err.count("note:") == 1
    assert steps.graphs == {} and steps.replays == {"regular": 1}
    assert steps.eager_runs == {"regular": 2, "rebalance_m0": 3}
    assert list(cuda.pools.values()) == ["released", "released"]
    assert cuda.current == cuda.default and cuda.device_index == 0


class Quiet:
    def start_epoch(self, *a): pass
    def step(self, **k): pass


def test_each_epoch_records_the_steps_that_ran_as_graph_replays(batches, capsys):
    """epochs.csv's *_graph_steps: replays per mode in each epoch; 0 once a failed capture turned graphs off."""
    t = build_trainer(resolve("demo", width=4, policy="random", warmup_epochs=0, lr=0.05), 3, torch.device("cpu"),
                      Distributed())
    use_cuda_graphs(t, lambda step, device: TwinSteps(step, device))
    rows = []
    for epoch in range(3):
        t.epoch = epoch
        if epoch == 2:  # every mode captured anew in this epoch, and its first capture fails
            t.graphs.fail.update({"regular", "rebalance_m0", "rebalance_m1"})
            t.graphs.graphs.clear()
        steps: list[dict] = []
        row = training.train_one_epoch(t, batches[:6], steps, Quiet())
        ran = {m: sum(s["mode"] == m for s in steps) for m in ("regular", "rebalance_m0", "rebalance_m1")}
        rows.append((ran, {m: row[f"{m}_graph_steps"] for m in ran}))
    (ran0, graphs0), (ran1, graphs1), (ran2, graphs2) = rows
    assert graphs0 == {m: max(0, n - 2) for m, n in ran0.items()}  # after each mode's two eager warm-up steps
    assert graphs1 == {m: n - min(n, max(0, 2 - ran0[m])) for m, n in ran1.items()}
    assert sum(graphs1.values()) > 0 and sum(ran2.values()) == 6
    assert graphs2 == {"regular": 0, "rebalance_m0": 0, "rebalance_m1": 0} and t.graphs.off is not None
