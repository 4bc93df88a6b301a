"""Two processes under torchrun (gloo on CPU): each reads its shard, the ranks agree, rank 0 writes the run."""
import json
import os
import subprocess

import pytest

from helpers import BIN, read_csv, train_command
from mmtm.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_ddp_on_gloo(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", *train_command(synthetic_data, out)]
    cmd[cmd.index("--epochs") + 1] = "2"
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = read_csv(out / "steps.csv")
    n_train = json.loads((synthetic_data / "dataset.json").read_text())["counts"]["train"]
    assert len(steps) == 2 * ((n_train // 2) // 4)      # each rank: half the split, batches of 4
    assert {s["mode"] for s in steps} > {"regular"}
    assert load_checkpoint(out / "last.pt")["world_size"] == 2
