"""The CUDA-graph step machinery on the CPU, through a twin of the CUDA graph (tests/lockstep.py): the warm-up count
per mode, the static inputs and their checks, capture failures, loading after capture, the step loop's order,
fused SGD, and which policies are graphed. tests/test_cuda.py runs the real thing."""
import pytest
import torch

from lockstep import TwinSteps, assert_close, run_lockstep, state
from loaders.factory import two_view_loader
from mmtm import training
from mmtm.config import resolve
from mmtm.hardware import Distributed
from mmtm.methods.ogm_ge import OGMGEPolicy
from mmtm.policy import BalancedPolicy, FlippedPolicy, RandomPolicy, VanillaPolicy, runs_in_cuda_graphs
from mmtm.registry import POLICIES
from mmtm.training import build_trainer, train_step, use_cuda_graphs

MODES = ["regular"] * 4 + ["rebalance_m0"] * 3 + ["regular", "rebalance_m1", "rebalance_m1", "rebalance_m1",
                                                  "regular", "rebalance_m0"]


@pytest.fixture(scope="module")
def batches(synthetic_data):
    loader = two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=0, backend="torch",
                             device="cpu", num_threads=1)
    epochs = [list(loader) for _ in range(2)]  # each iteration is the next epoch
    return (epochs[0] + epochs[1])[:len(MODES)]


def run(batches, graphed: bool, fail=(), **overrides):
    t = build_trainer(resolve("demo", width=4, policy="balanced", lr=0.05, **overrides), 3, torch.device("cpu"),
                      Distributed())
    if graphed:
        use_cuda_graphs(t, lambda step: TwinSteps(step, fail=fail))
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


def test_a_failed_capture_runs_that_mode_eager_with_one_note(batches, capsys):
    eager, eager_rows = run(batches, graphed=False)
    graphed, graph_rows = run(batches, graphed=True, fail={"rebalance_m0"})
    assert graph_rows == eager_rows
    assert graphed.graphs.captured == ["regular", "rebalance_m1"] and graphed.graphs.eager_modes == {"rebalance_m0"}
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: CUDA graph capture of rebalance_m0 steps failed (operation not permitted when stream is "
                     "capturing (simulated)); they run eager for the rest of the run"]
    assert graphed.graphs.eager_runs["rebalance_m0"] == MODES.count("rebalance_m0")  # every one of them, eager


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
    assert {name for name, p in POLICIES.items() if runs_in_cuda_graphs(p.from_config(resolve("demo")))} == \
        {"vanilla", "balanced", "random", "flipped"}
    assert not runs_in_cuda_graphs(OGMGEPolicy())

    class WithLoss(BalancedPolicy):
        def loss(self, *args):
            return super().loss(*args)

    class Vouched(WithLoss):
        cuda_graphs = True

    assert not runs_in_cuda_graphs(WithLoss()) and runs_in_cuda_graphs(Vouched())


def test_lockstep_harness_on_the_cpu_twin(synthetic_data, roundtrip):
    """The harness tests/test_cuda.py runs on a GPU, here on the twin: exact equality after every step over three
    epochs, with an LR drop, validation passes, a load after capture and a resume, and re-balancing steps that
    update the slow branch only."""
    cfg = resolve("demo", width=4, batch_size=4, policy="random", lr=0.05, schedule="plateau", plateau_patience=0,
                  loader="torch",
                  device="cpu", num_threads=1, rebalance_params="slow")
    common = dict(batch_size=4, seed=0, backend="torch", device="cpu", num_threads=1)
    loader = two_view_loader(synthetic_data, "train", train=True, **common)
    val = two_view_loader(synthetic_data, "val", train=False, **common)
    modes = run_lockstep(cfg, 3, loader, val, graphs=lambda step: TwinSteps(step, warmup=1), rel=0,
                         roundtrip=roundtrip)
    assert modes == {"regular", "rebalance_m0", "rebalance_m1"}
