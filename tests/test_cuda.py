"""The CUDA paths: CUDA-graph steps against eager ones in fp32 after every step (tests/lockstep.py), host syncs per
step with the loader included, bf16 + channels-last training, the loaders' GPU decoding, what a failed capture
leaves behind, and the eager path under torch's CUDA sanitizer.

Skipped with a reason on machines without a GPU (CI here has none); `make gpu-check` runs them where one is present.
The CPU twins run everywhere (tests/test_cuda_graphs.py). Data are PIL-made (tests/conftest.py)."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import TINY, invoke, read_csv
from lockstep import run_lockstep, trainer
from mmtm.loaders.factory import two_view_loader
from mmtm.training.config import resolve
from mmtm.training.cuda_graphs import GraphedSteps
from mmtm.analysis.evaluate import evaluate
from mmtm.training.loop import launch_step, read_step, train_step

# Deterministic cuBLAS when asked for (the exact twin test); read when a cuBLAS handle is made, so set at import.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REL = 1e-5  # fp32 graph vs eager, relative per tensor
ALL_MODES = {"regular", "rebalance_m0", "rebalance_m1"}


def dali_or_skip():
    pytest.importorskip("nvidia.dali", reason="needs NVIDIA DALI")


@pytest.fixture
def jpeg_data(make_dataset, tmp_path):
    return make_dataset(tmp_path, size=32, per_split={"train": 16})  # 48 training objects: 12 batches of 4


def loaders(data, backend):
    common = dict(batch_size=4, seed=0, backend=backend, device="cuda", num_threads=2)
    return (two_view_loader(data, "train", train=True, **common), two_view_loader(data, "val", train=False, **common))


def graphed_steps(step, device):
    return GraphedSteps(step, device, warmup=1)  # captured at a mode's second step, so every mode replays


@pytest.fixture
def no_capture_note(capfd):
    yield
    err = capfd.readouterr().err
    assert "note: CUDA graphs off" not in err, err


@pytest.mark.parametrize("policy,rebalance_params,backend,speed", [
    ("balanced", "all", "dali", {}),
    ("balanced", "all", "dali", {"speed_signal": "window", "speed_window": 5}),
    ("balanced", "all", "torch", {"speed_from_epoch": 1}),
    ("random", "all", "dali", {}), ("random", "slow", "dali", {}), ("random", "all", "torch", {})])
def test_graph_steps_equal_eager_steps_after_every_step_in_fp32(jpeg_data, roundtrip, no_capture_note, policy,
                                                                 rebalance_params, backend, speed):
    """Three epochs of 12 steps in lock-step: an LR drop, epoch boundaries, validation passes between replays, a
    checkpoint loaded after capture and a resume; weights, momentum buffers, the CLS meter's sums and counting
    state and the MMTM running gate means compared after every step; after every epoch no capture failed and every
    step past a mode's one warm-up step was a replay. The random policy (seed 0) runs every mode at least twice in
    each epoch, so all three replay in every epoch, the resumed one included (tests/test_cuda_graphs.py's twin)."""
    if backend == "dali":
        dali_or_skip()
    cfg = resolve("demo", width=8, batch_size=4, policy=policy, lr=0.05, schedule="plateau", plateau_patience=0,
                  amp="off", device="cuda", loader=backend, rebalance_params=rebalance_params, alpha=0.0,
                  warmup_epochs=0, **speed)
    train, val = loaders(jpeg_data, backend)
    replayed = run_lockstep(cfg, 3, train, val, graphs=graphed_steps, rel=REL, roundtrip=roundtrip)
    assert "regular" in set().union(*replayed) and set().union(*replayed) & {"rebalance_m0", "rebalance_m1"}
    if policy == "random":
        assert replayed == [ALL_MODES] * 3


@pytest.fixture
def deterministic():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel shows as a diff
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def test_deterministic_twins_are_equal_bit_for_bit(jpeg_data, roundtrip, no_capture_note, deterministic):
    """With deterministic kernels a replay runs the very kernels the eager step runs, on the same values: equal."""
    cfg = resolve("demo", width=8, batch_size=4, policy="random", lr=0.05, schedule="plateau", plateau_patience=0,
                  amp="off", device="cuda", loader="torch", warmup_epochs=0)
    train, val = loaders(jpeg_data, "torch")
    assert run_lockstep(cfg, 3, train, val, graphs=graphed_steps, rel=0, roundtrip=roundtrip) == [ALL_MODES] * 3


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
def test_a_training_step_with_its_next_batch_syncs_once(jpeg_data, no_capture_note, graphs, backend):
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
    if t.graphs is not None:  # the measured step was a replay
        assert t.graphs.off is None and t.graphs.replays == {"regular": 2}
    assert host_syncs(lambda: evaluate(t.net, val, t.compute.fp32())) == 1


def test_bf16_channels_last_steps_learn_on_the_gpu(jpeg_data, no_capture_note):
    cfg = resolve("demo", width=8, batch_size=4, policy="balanced", loader="torch", device="cuda")
    t = trainer(cfg, 3, None)
    assert t.compute.amp and t.compute.channels_last and t.graphs is not None
    train, _ = loaders(jpeg_data, "torch")
    losses = []
    for epoch in range(20):  # 240 steps
        train.set_epoch(epoch)
        for batch in train:
            losses.append(train_step(t, batch, "regular")["loss"])
    for mode in ("rebalance_m0", "rebalance_m1"):
        losses.append(train_step(t, batch, mode)["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert t.graphs.off is None and t.graphs.replays["regular"] == len(losses) - 2 - 3
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
    """With the real warm-up count: every epoch's regular steps past the warm-up replay (epochs.csv), no capture
    note, and a resumed run captures anew and trains like the uninterrupted one."""
    data = make_dataset(tmp_path, size=32, per_split={"train": 16})
    gpu = [a if a != "cpu" else "cuda" for a in TINY] + ["--amp", "off"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = invoke("train", "--data", data, "--out", full, "--epochs", 3, *gpu)
    assert r.exit_code == 0 and "note: CUDA graphs off" not in r.output, r.output
    assert invoke("train", "--data", data, "--out", cut, "--epochs", 2, *gpu).exit_code == 0
    r = invoke("train", "--data", data, "--out", cut, "--epochs", 3, "--resume", *gpu)
    assert r.exit_code == 0 and "note: CUDA graphs off" not in r.output, r.output
    assert json.loads((cut / "config.json").read_text())["cuda_graphs"] == "auto"
    for run in (full, cut):
        epochs = read_csv(run / "epochs.csv")
        assert [int(e["regular_graph_steps"]) for e in epochs][0] == int(epochs[0]["regular_steps"]) - 3
        assert all(int(e["regular_graph_steps"]) > 0 for e in epochs)
    a, b = read_csv(full / "steps.csv"), read_csv(cut / "steps.csv")
    assert len(a) == len(b)  # the resumed epoch ran its graphs (captured anew) to the end
    assert [float(s["loss"]) for s in b] == pytest.approx([float(s["loss"]) for s in a], rel=1e-4)


def test_a_failed_capture_leaves_the_stream_the_allocator_and_the_run_working(jpeg_data, capfd):
    """A re-balancing step that reads a value on the host cannot be captured: graphs go off for the run with one
    note, the current stream is the one before, the allocator is not left capturing (a new capture works), and
    training goes on eager."""
    cfg = resolve("demo", width=8, batch_size=4, policy="balanced", lr=0.05, amp="off", device="cuda",
                  loader="torch")
    t = trainer(cfg, 3, None)
    step = t.graphs.step

    def syncing_step(view0, view1, y, mode):
        readout = step(view0, view1, y, mode)
        if mode == "rebalance_m0":
            float(readout[0])  # a host sync: not allowed while capturing
        return readout

    t.graphs = GraphedSteps(syncing_step, t.compute.device, warmup=1)
    train, _ = loaders(jpeg_data, "torch")
    stream = torch.cuda.current_stream()
    for batch, mode in zip(train, ["regular", "regular", "rebalance_m0", "rebalance_m0", "regular", "regular"]):
        train_step(t, batch, mode)
        assert torch.cuda.current_stream() == stream
    assert t.graphs.off is not None and t.graphs.off.startswith("capture of rebalance_m0 steps failed")
    assert t.graphs.replays == {"regular": 1} and t.graphs.graphs == {}
    assert capfd.readouterr().err.count("note: CUDA graphs off") == 1
    x = torch.zeros(16, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = x + 1
    g.replay()
    assert torch.equal(y, torch.ones(16, device="cuda"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_run_on_the_second_gpu_captures_its_steps_there(jpeg_data, no_capture_note):
    """--device cuda:1 while cuda:0 is current: a side stream on cuda:0 made an empty graph that replayed nothing."""
    cfg = resolve("demo", width=8, batch_size=4, policy="random", lr=0.05, schedule="plateau", plateau_patience=0,
                  amp="off", device="cuda:1", loader="torch", warmup_epochs=0)
    common = dict(batch_size=4, seed=0, backend="torch", device="cuda:1", num_threads=2)
    train = two_view_loader(jpeg_data, "train", train=True, **common)
    val = two_view_loader(jpeg_data, "val", train=False, **common)
    assert torch.cuda.current_device() == 0
    replayed = run_lockstep(cfg, 3, train, val, graphs=graphed_steps, rel=REL, epochs=1)
    assert replayed == [ALL_MODES]


def test_the_dali_loader_hands_out_torch_owned_memory(jpeg_data):
    """A DALI batch is a copy in torch's caching allocator, not a DLPack view of DALI's buffer."""
    dali_or_skip()
    batch = next(iter(loaders(jpeg_data, "dali")[0]))
    segments = [(s["address"], s["address"] + s["total_size"]) for s in torch.cuda.memory_snapshot()]
    for x in (batch.view0, batch.view1):
        assert any(lo <= x.data_ptr() < hi for lo, hi in segments)


def test_the_eager_path_passes_the_cuda_sanitizer(make_dataset, tmp_path):
    """Eager steps on the side stream (a mode's warm-up), the loader and validation under TORCH_CUDA_SANITIZER:
    no stream ever reads memory another writes without an ordering between them."""
    data = make_dataset(tmp_path, size=32)
    gpu = [a if a != "cpu" else "cuda" for a in TINY]
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--max-steps-per-epoch",
            "3", *gpu]  # 3 steps: all of them warm-up (eager) steps of GraphedSteps
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-c", "from mmtm.cli.app import main; main()", *args], cwd=root,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TORCH_CUDA_SANITIZER": "1",
                            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))})
    assert p.returncode == 0 and "CSAN" not in p.stderr, p.stderr[-3000:]
