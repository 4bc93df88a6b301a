"""`mmtm eval-cur`: both CUR passes, every key of cur.json, the checkpoint left untouched, loaders agreeing."""
import hashlib
import json

import pytest

from helpers import invoke


def test_eval_cur_writes_every_key_and_leaves_checkpoint_untouched(trained_runs):
    run = trained_runs / "balanced"
    before = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    r = invoke("eval-cur", run, "--json")
    assert r.exit_code == 0, r.output
    cur = json.loads((run / "cur.json").read_text())
    for key in ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "u_m1_given_m0", "u_m0_given_m1",
                "d_util", "checkpoint", "split", "n"):
        assert key in cur
    assert cur["split"] == "test" and cur["n"] > 0
    assert cur["d_util"] == pytest.approx(cur["u_m1_given_m0"] - cur["u_m0_given_m1"])
    assert cur["u_m1_given_m0"] == pytest.approx((cur["acc_m0"] - cur["acc_m0_only"]) / cur["acc_m0"])
    assert hashlib.sha256((run / "best.pt").read_bytes()).hexdigest() == before


def test_eval_cur_gives_the_same_numbers_with_either_loader(trained_runs):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    results = {}
    for backend in ("torch", "dali"):
        r = invoke("eval-cur", trained_runs / "random", "--loader", backend, "--json")
        assert r.exit_code == 0, r.output
        results[backend] = json.loads((trained_runs / "random" / "cur.json").read_text())
    for key in ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "d_util"):
        assert results["dali"][key] == pytest.approx(results["torch"][key], abs=1e-6), key
