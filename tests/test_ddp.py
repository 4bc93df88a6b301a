"""Two processes under torchrun (gloo on CPU): each reads its shard, the ranks agree, rank 0 writes the run.

The ranks' agreement on step, d_speed and the policy's state is checked by training itself after every epoch
(it stops with an error otherwise), so these runs also cover what each policy shares across ranks: OGM-GE's
summed scores and noise, PMR's summed prototypes, G-Blending's summed split losses."""
import json
import os
import subprocess

import pytest

from helpers import BIN, read_csv, train_command
from mmtm.checkpoint import load_checkpoint

POLICY_FLAGS = {"balanced": ["--alpha", "0"], "ogm-ge": [], "pmr": [], "g-blending": ["--gb-interval", "1"]}


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICY_FLAGS)
def test_two_process_ddp_on_gloo(synthetic_data, tmp_path, policy):
    out = tmp_path / "ddp"
    train = train_command(synthetic_data, out, "--policy", policy, *POLICY_FLAGS[policy])
    train[train.index("--epochs") + 1] = "2"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", *train]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = read_csv(out / "steps.csv")
    n_train = json.loads((synthetic_data / "dataset.json").read_text())["counts"]["train"]
    assert len(steps) == 2 * ((n_train // 2) // 4)      # each rank: half the split, batches of 4
    if policy == "balanced":
        assert {s["mode"] for s in steps} > {"regular"}
    assert load_checkpoint(out / "last.pt")["world_size"] == 2
