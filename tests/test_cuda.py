"""The CUDA paths: bf16 autocast + channels_last training steps, CUDA-graph steps against eager ones, host syncs
per step and per evaluation pass, and the torch loader's nvJPEG decoding.

Skipped with a reason on machines without a GPU (CI here has none); run them where one is present."""
import json
import warnings

import pytest
import torch

from helpers import TINY, invoke, read_csv
from loaders.factory import two_view_loader
from mmtm.config import resolve
from mmtm.evaluate import evaluate
from mmtm.hardware import Distributed
from mmtm.training import build_trainer, step_on_device, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_torch_loader_decodes_on_the_gpu_like_on_the_cpu(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32)
    cpu = next(iter(two_view_loader(data, "test", batch_size=4, train=False, seed=0, backend="torch", device="cpu")))
    gpu = next(iter(two_view_loader(data, "test", batch_size=4, train=False, seed=0, backend="torch", device="cuda")))
    assert gpu.view0.is_cuda and gpu.label.is_cuda
    assert torch.equal(gpu.index.cpu(), cpu.index)
    assert (gpu.view0.cpu() - cpu.view0).abs().max() < 0.1   # nvJPEG vs libjpeg-turbo: a few levels


def test_bf16_channels_last_steps_learn_on_the_gpu(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32)
    cfg = resolve("demo", width=8, batch_size=4, policy="balanced", loader="torch", device="cuda")
    t = build_trainer(cfg, 3, torch.device("cuda"), Distributed())
    assert t.compute.amp and t.compute.channels_last
    loader = two_view_loader(data, "train", batch_size=4, train=True, seed=0, backend="torch", device="cuda")
    losses = []
    for epoch in range(40):
        loader.set_epoch(epoch)
        for batch in loader:
            losses.append(train_step(t, batch, "regular")["loss"])
    for mode in ("rebalance_m0", "rebalance_m1"):
        losses.append(train_step(t, batch, mode)["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    fit = evaluate(t.net, two_view_loader(data, "train", batch_size=4, train=False, seed=0, backend="torch",
                                          device="cuda"), t.compute)
    assert fit["acc"] >= 0.9  # the class colour block is easy to fit


def cuda_trainer(policy="balanced", graphs="auto", lr=0.05):
    cfg = resolve("demo", width=8, batch_size=4, policy=policy, loader="torch", device="cuda", cuda_graphs=graphs,
                  lr=lr)
    return build_trainer(cfg, 3, torch.device("cuda"), Distributed())


@pytest.fixture
def cuda_batches(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32, per_split={"train": 8})  # 24 objects: 6 batches of 4 an epoch
    loader = two_view_loader(data, "train", batch_size=4, train=True, seed=0, backend="torch", device="cuda")
    return [batch for _ in range(3) for batch in loader]


MODES = ["regular"] * 6 + ["rebalance_m0"] * 5 + ["regular"] * 2 + ["rebalance_m1"] * 5


def test_graph_steps_match_eager_steps_within_bf16_tolerance(cuda_batches):
    runs = {}
    for graphs in ("off", "auto"):
        t = cuda_trainer(graphs=graphs)
        assert (t.graphs is not None) == (graphs == "auto") and t.compute.amp
        rows = [train_step(t, batch, mode) for batch, mode in zip(cuda_batches, MODES)]
        runs[graphs] = rows, {k: v.float() for k, v in t.net.state_dict().items()}, t
    (eager_rows, eager_weights, _), (graph_rows, graph_weights, graphed) = runs["off"], runs["auto"]
    assert set(graphed.graphs.graphs) == {"regular", "rebalance_m0", "rebalance_m1"}  # every mode was captured
    for a, b in zip(eager_rows, graph_rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)
        assert b["d_speed"] == pytest.approx(a["d_speed"], abs=2e-2)
        assert b["correct"] == pytest.approx(a["correct"], abs=1)
    for key, value in eager_weights.items():
        assert torch.allclose(graph_weights[key], value, rtol=5e-2, atol=5e-3), key


def test_the_plateau_schedule_reaches_the_captured_step(cuda_batches):
    t = cuda_trainer(policy="vanilla")
    for batch in cuda_batches[:4]:  # three eager warm-up steps, then capture and replay
        train_step(t, batch, "regular")
    lr = t.optimizer.param_groups[0]["lr"]
    t.scheduler.patience = 0
    t.scheduler.step(1.0)
    t.scheduler.step(2.0)  # worse than the best: the schedule lowers the learning rate in place
    assert t.optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.05 * 0.3)
    lr.fill_(0.0)
    before = {k: p.detach().clone() for k, p in t.net.named_parameters()}
    train_step(t, cuda_batches[4], "regular")
    assert all(torch.equal(before[k], p) for k, p in t.net.named_parameters())


def host_syncs(fn) -> int:
    """How many times fn makes the host wait for the GPU (torch's sync debug mode warns once per sync)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("graphs", ["off", "auto"])
def test_a_training_step_syncs_once_and_an_evaluation_pass_once(cuda_batches, graphs):
    t = cuda_trainer(graphs=graphs)
    for batch in cuda_batches[:4]:
        train_step(t, batch, "regular")
    assert host_syncs(lambda: train_step(t, cuda_batches[4], "regular")) == 1
    assert host_syncs(lambda: step_on_device(t, cuda_batches[5].view0, cuda_batches[5].view1, cuda_batches[5].label,
                                             "regular")) == 0
    assert host_syncs(lambda: evaluate(t.net, cuda_batches[:6], t.compute.fp32())) == 1


def test_resume_in_graph_mode_continues_the_run(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32, per_split={"train": 8})
    gpu = [a if a != "cpu" else "cuda" for a in TINY]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--data", data, "--out", full, "--epochs", 3, *gpu).exit_code == 0
    assert invoke("train", "--data", data, "--out", cut, "--epochs", 2, *gpu).exit_code == 0
    r = invoke("train", "--data", data, "--out", cut, "--epochs", 3, "--resume", *gpu)
    assert r.exit_code == 0, r.output
    assert json.loads((cut / "config.json").read_text())["cuda_graphs"] == "auto"
    a, b = read_csv(full / "steps.csv"), read_csv(cut / "steps.csv")
    assert len(a) == len(b)  # the resumed epoch ran its graphs (captured anew) to the end
    assert [float(s["loss"]) for s in b] == pytest.approx([float(s["loss"]) for s in a], rel=5e-2)
