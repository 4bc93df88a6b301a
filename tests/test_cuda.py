"""The CUDA paths: CUDA-graph steps against eager ones in fp32 after every step (tests/lockstep.py), host syncs per
step with the loader included, bf16 + channels-last training, the loaders' GPU decoding.

Skipped with a reason on machines without a GPU (CI here has none); `make gpu-check` runs them where one is present.
The CPU twin of the lock-step comparison runs everywhere (tests/test_cuda_graphs.py)."""
import json
import warnings

import pytest
import torch

from helpers import TINY, invoke, read_csv
from lockstep import run_lockstep, trainer
from loaders.factory import two_view_loader
from mmtm.config import resolve
from mmtm.cuda_graphs import GraphedSteps
from mmtm.evaluate import evaluate
from mmtm.training import launch_step, read_step, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REL = 1e-5  # fp32 graph vs eager, relative per tensor


def dali_or_skip():
    pytest.importorskip("nvidia.dali", reason="needs NVIDIA DALI")


@pytest.fixture
def jpeg_data(make_dataset, tmp_path):
    return make_dataset(tmp_path, size=32, per_split={"train": 8})  # 24 training objects: 6 batches of 4


def loaders(data, backend):
    common = dict(batch_size=4, seed=0, backend=backend, device="cuda", num_threads=2)
    return (two_view_loader(data, "train", train=True, **common), two_view_loader(data, "val", train=False, **common))


@pytest.mark.parametrize("policy,rebalance_params,backend", [
    ("balanced", "all", "dali"), ("random", "all", "dali"), ("random", "slow", "dali"), ("random", "all", "torch")])
def test_graph_steps_equal_eager_steps_after_every_step_in_fp32(jpeg_data, roundtrip, policy, rebalance_params,
                                                                 backend):
    """Three epochs in lock-step: every mode, an LR drop, epoch boundaries, validation passes between replays, a
    checkpoint loaded after capture and a resume; weights, momentum buffers, the CLS meter's sums and the MMTM
    running gate means compared after every step."""
    if backend == "dali":
        dali_or_skip()
    cfg = resolve("demo", width=8, batch_size=4, policy=policy, lr=0.05, schedule="plateau", plateau_patience=0,
                  amp="off", device="cuda", loader=backend, rebalance_params=rebalance_params, alpha=0.0,
                  warmup_epochs=0)
    train, val = loaders(jpeg_data, backend)
    modes = run_lockstep(cfg, 3, train, val, graphs=GraphedSteps, rel=REL, roundtrip=roundtrip)
    assert "regular" in modes and modes & {"rebalance_m0", "rebalance_m1"}
    if policy == "random":
        assert modes == {"regular", "rebalance_m0", "rebalance_m1"}


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
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_training_step_with_its_next_batch_syncs_once(jpeg_data, graphs, backend):
    """One iteration of the training loop — launch the step, ask the loader for the next batch, read the step —
    waits for the GPU once; an evaluation pass once."""
    if backend == "dali":
        dali_or_skip()
    cfg = resolve("demo", width=8, batch_size=4, policy="vanilla", lr=0.05, device="cuda", loader=backend,
                  cuda_graphs=graphs)
    t = trainer(cfg, 3, None)
    assert (t.graphs is not None) == (graphs == "auto")
    train, val = loaders(jpeg_data, backend)
    batches = iter(train)
    current = [next(batches)]

    def iteration():
        readout = launch_step(t, current[0], "regular")
        current[0] = next(batches)
        read_step(t, readout, "regular")

    for _ in range(4):  # eager warm-up, then capture
        iteration()
    assert host_syncs(iteration) == 1
    assert host_syncs(lambda: evaluate(t.net, val, t.compute.fp32())) == 1


def test_bf16_channels_last_steps_learn_on_the_gpu(jpeg_data):
    cfg = resolve("demo", width=8, batch_size=4, policy="balanced", loader="torch", device="cuda")
    t = trainer(cfg, 3, None)
    assert t.compute.amp and t.compute.channels_last and t.graphs is not None
    train, _ = loaders(jpeg_data, "torch")
    losses = []
    for epoch in range(40):
        train.set_epoch(epoch)
        for batch in train:
            losses.append(train_step(t, batch, "regular")["loss"])
    for mode in ("rebalance_m0", "rebalance_m1"):
        losses.append(train_step(t, batch, mode)["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    fit = evaluate(t.net, two_view_loader(jpeg_data, "train", batch_size=4, train=False, seed=0, backend="torch",
                                          device="cuda"), t.compute)
    assert fit["acc"] >= 0.9  # the class colour block is easy to fit


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_the_loaders_decode_on_the_gpu_like_on_the_cpu(jpeg_data, backend):
    if backend == "dali":
        dali_or_skip()
    kw = dict(batch_size=4, train=True, seed=0, backend=backend)
    cpu = next(iter(two_view_loader(jpeg_data, "train", device="cpu", **kw)))
    gpu = next(iter(two_view_loader(jpeg_data, "train", device="cuda", **kw)))
    assert gpu.view0.is_cuda and gpu.label.is_cuda
    assert torch.equal(gpu.index.cpu(), cpu.index) and torch.equal(gpu.label.cpu(), cpu.label)
    assert (gpu.view0.cpu() - cpu.view0).abs().max() < 0.1   # nvJPEG vs libjpeg-turbo: a few levels


def test_resume_in_graph_mode_continues_the_run(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=32, per_split={"train": 8})
    gpu = [a if a != "cpu" else "cuda" for a in TINY] + ["--amp", "off"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--data", data, "--out", full, "--epochs", 3, *gpu).exit_code == 0
    assert invoke("train", "--data", data, "--out", cut, "--epochs", 2, *gpu).exit_code == 0
    r = invoke("train", "--data", data, "--out", cut, "--epochs", 3, "--resume", *gpu)
    assert r.exit_code == 0, r.output
    assert json.loads((cut / "config.json").read_text())["cuda_graphs"] == "auto"
    a, b = read_csv(full / "steps.csv"), read_csv(cut / "steps.csv")
    assert len(a) == len(b)  # the resumed epoch ran its graphs (captured anew) to the end
    assert [float(s["loss"]) for s in b] == pytest.approx([float(s["loss"]) for s in a], rel=1e-4)
