"""Two processes (gloo on CPU): each reads its shard, the ranks agree, rank 0 writes the run.

The ranks' agreement on step, d_speed and the policy's state is checked by training itself after every epoch
(it stops with an error otherwise), so these runs also cover what each policy shares across ranks: OGM-GE's
summed scores and noise, PMR's summed prototypes, G-Blending's summed split losses, MMPareto's
averaged per-loss gradients (its last step's weights are in its state), AGM's summed response losses and OPM's
summed scores, common draws and noise (their running scores, coefficients and last q are in their states),
Re-learning's gathered features (its purities, weights and initial encoders are in its state); the balanced run,
d_speed and
the re-balancing steps. The balanced run goes through torchrun itself; the others' ranks are forked from the job
server (tests/helpers.py) with the variables torchrun sets."""
import json
import math
import os
import socket
import subprocess
import time
from multiprocessing.connection import wait

import pytest

from helpers import BIN, read_csv, start_mmtm, train_args
from mmtm.training.checkpoint import load_checkpoint
from mmtm.analysis.jobs import start

# G-Blending's estimate trains three copies: its epochs are cut to 3 steps.
POLICY_FLAGS = {"balanced": ["--alpha", "0"], "ogm-ge": [], "pmr": [], "mmpareto": [], "agm": [],
                "opm": ["--opm-warmup-epochs", "0", "--opm-ogm", "ogm-ge"],
                "g-blending": ["--gb-interval", "1", "--max-steps-per-epoch", "3"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_ranks(ranks, timeout: float = 300) -> list[int | None]:
    """Wait for the ranks' exit codes; a rank that fails ends the others, as torchrun's agent would, so a failure
    neither waits out gloo's timeout nor leaves a process behind."""
    deadline = time.time() + timeout
    while any(r.exitcode is None for r in ranks) and time.time() < deadline:
        if any(r.exitcode not in (None, 0) for r in ranks):
            break
        wait([r.sentinel for r in ranks if r.exitcode is None], timeout=1)
    for r in ranks:
        if r.exitcode is None:
            r.kill()
        r.join()
    return [r.exitcode for r in ranks]


def check_two_rank_run(data, out, policy) -> None:
    steps = read_csv(out / "steps.csv")
    n_train = json.loads((data / "dataset.json").read_text())["counts"]["train"]
    cap = 3 if "--max-steps-per-epoch" in POLICY_FLAGS[policy] else math.inf
    assert len(steps) == 2 * min(cap, (n_train // 2) // 4)  # each rank: half the split, batches of 4
    if policy == "balanced":
        assert {s["mode"] for s in steps} > {"regular"}
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


def two_epochs(data, out, policy) -> list[str]:
    # A DataLoader worker in each rank, as users run it: forked from a process that runs gloo's threads.
    return train_args(data, out, "--policy", policy, *POLICY_FLAGS[policy], "--loader-threads", "1", epochs=2)


@pytest.mark.slow
# balanced: the torchrun test below
@pytest.mark.parametrize("policy", ["ogm-ge", "pmr", "g-blending", "mmpareto", "agm", "opm"])
def test_two_process_ddp_on_gloo(synthetic_data, tmp_path, policy):
    out = tmp_path / "ddp"
    port = str(free_port())
    ranks = [start_mmtm(*two_epochs(synthetic_data, out, policy), log=tmp_path / f"rank{rank}.log",
                        env={"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for rank in (0, 1)]
    assert join_ranks(ranks) == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]
    check_two_rank_run(synthetic_data, out, policy)


@pytest.mark.slow
def test_relearn_ranks_cluster_the_same_gathered_features(synthetic_data, tmp_path):
    """Re-learning after epoch 1 (so a third epoch): each rank clusters every rank's features, so the purities,
    weights and re-initialised encoders agree (training compares the ranks' policy states after every epoch)."""
    out = tmp_path / "ddp"
    port = str(free_port())
    args = train_args(synthetic_data, out, "--policy", "relearn", "--relearn-interval", "1", "--threads", "1",
                      epochs=3)
    ranks = [start_mmtm(*args, log=tmp_path / f"rank{rank}.log",
                        env={"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for rank in (0, 1)]
    assert join_ranks(ranks) == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]
    state = load_checkpoint(out / "last.pt")["policy"]
    assert len(state["weights"]) == 2 and len(state["purities"]) == 4


@pytest.mark.slow
def test_torchrun_starts_a_two_process_run(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", str(BIN / "mmtm"),
           *two_epochs(synthetic_data, out, "balanced")]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    check_two_rank_run(synthetic_data, out, "balanced")


def test_the_rank_agreement_digest_reads_values_not_reprs(monkeypatch):
    """The digest the ranks compare after every epoch: equal for equal values whatever a tensor's repr says (a CUDA
    tensor's names its device, cuda:0 on one rank and cuda:1 on the other), different for different values."""
    import torch

    from mmtm.training.loop import state_digest

    state = {"protos": [torch.arange(6.0).view(2, 3), torch.ones(2, 3)], "in_window": True, "k": 3}
    plain = state_digest(state)
    for rank in (0, 1):
        monkeypatch.setattr(torch.Tensor, "__repr__", lambda self, rank=rank: f"tensor(..., device='cuda:{rank}')")
        assert state_digest(state) == plain
    monkeypatch.undo()
    assert state_digest({**state, "protos": [torch.arange(6.0).view(2, 3).t().contiguous().t(), torch.ones(2, 3)]}) \
        == plain  # another memory layout, the same values
    changed = {**state, "protos": [torch.arange(6.0).view(2, 3), torch.full((2, 3), 1.5)]}
    assert state_digest(changed) != plain
    assert state_digest({**state, "k": 4}) != plain


def _pmr_choice_on_rank(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from mmtm.methods import pmr

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Different shards: rank 0's batch finds m0 dominant by a little, rank 1's finds m1 dominant by a lot.
    y = torch.tensor([0, 1])
    sharp, flat = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.2, 0.0], [0.0, 0.2]])
    logits0, logits1 = (sharp * 0.2, flat) if rank == 0 else (flat, sharp * 2)
    with open(out, "w") as f:
        json.dump(pmr.rebalance_coefficients(logits0, logits1, y, alpha=1.0).tolist(), f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_pmr_chooses_the_same_slower_modality_on_every_rank(tmp_path):
    import torch

    from mmtm.methods import pmr

    port = free_port()
    procs = [start(_pmr_choice_on_rank, rank, port, str(tmp_path / f"rank{rank}.json"), env=dict(os.environ))
             for rank in (0, 1)]
    assert join_ranks(procs, timeout=120) == [0, 0]
    results = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    # alone, rank 0 would give α to m1 and rank 1 to m0; with the scores summed both give it to m0 (m1 dominates)
    y = torch.tensor([0, 1])
    sharp, flat = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.2, 0.0], [0.0, 0.2]])
    assert pmr.rebalance_coefficients(sharp * 0.2, flat, y).tolist() == [0.0, 1.0]
    assert pmr.rebalance_coefficients(flat, sharp * 2, y).tolist() == [1.0, 0.0]
    assert results == {0: [1.0, 0.0], 1: [1.0, 0.0]}
