"""The CUDA-graph step machinery on the CPU, through a twin of the CUDA graph: the warm-up count per mode, the
static input buffers, the per-mode graphs and the readout they write. tests/test_cuda.py runs the real thing."""
import pytest
import torch

from loaders.factory import two_view_loader
from mmtm.config import resolve
from mmtm.cuda_graphs import GraphedSteps
from mmtm.hardware import Distributed
from mmtm.training import build_trainer, step_on_device, train_step


class TwinGraph:
    """What a captured graph does on replay: the recorded step again, on the static inputs, into one readout."""

    def __init__(self, run):
        self.run, self.readout = run, torch.empty(0, dtype=torch.float64)

    def replay(self):
        self.readout.resize_(0).resize_as_(out := self.run()).copy_(out)


class TwinSteps(GraphedSteps):
    def __init__(self, step, warmup=2):
        super().__init__(step, warmup)
        self.captured = []

    def _eager(self, view0, view1, label, mode):
        return self.step(view0, view1, label, mode)

    def _capture(self, mode):
        self.captured.append(mode)
        graph = TwinGraph(lambda: self.step(*self.inputs, mode))
        return graph, graph.readout


MODES = ["regular"] * 4 + ["rebalance_m0"] * 3 + ["regular", "rebalance_m1", "rebalance_m1", "rebalance_m1",
                                                  "regular", "rebalance_m0"]


@pytest.fixture(scope="module")
def batches(synthetic_data):
    loader = two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=0, backend="torch",
                             device="cpu", num_threads=1)
    epochs = [list(loader) for _ in range(2)]  # each iteration is the next epoch
    return (epochs[0] + epochs[1])[:len(MODES)]


def run(batches, graphed: bool):
    t = build_trainer(resolve("demo", width=4, policy="balanced", lr=0.05), 3, torch.device("cpu"), Distributed())
    if graphed:
        t.graphs = TwinSteps(lambda v0, v1, y, mode: step_on_device(t, v0, v1, y, mode))
    rows = [train_step(t, b, mode) for b, mode in zip(batches, MODES)]
    return t, rows


def test_graph_steps_train_exactly_like_eager_steps(batches):
    eager, eager_rows = run(batches, graphed=False)
    graphed, graph_rows = run(batches, graphed=True)
    assert graph_rows == eager_rows  # loss, correct and every d_speed view, step by step
    for key, value in eager.net.state_dict().items():
        assert torch.equal(value, graphed.net.state_dict()[key]), key
    # each mode ran eagerly twice, then was captured once and replayed from then on
    assert graphed.graphs.captured == ["regular", "rebalance_m0", "rebalance_m1"]
    assert graphed.graphs.eager_runs == {"regular": 2, "rebalance_m0": 2, "rebalance_m1": 2}


def test_a_replay_reads_the_batch_copied_into_the_static_inputs(batches):
    t, _ = run(batches[:3], graphed=True)  # regular captured at the third step
    (view0, _, label) = t.graphs.inputs
    assert torch.equal(view0, batches[2].view0) and torch.equal(label, batches[2].label)
    batches[2].view0.add_(1)  # the loader's tensor is not the graph's input
    assert not torch.equal(view0, batches[2].view0)
    batches[2].view0.sub_(1)
