"""`mmtm report` on trained runs; `mmtm compare` on a tiny synthetic set, and the mean ± std aggregation."""
import json
import os

import pytest

from helpers import invoke
from mmtm.compare import aggregate


def test_report_writes_plots_and_summary(trained_runs, tmp_path):
    invoke("eval-cur", trained_runs / "vanilla")
    r = invoke("report", trained_runs / "vanilla", trained_runs / "balanced", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    names = set(os.listdir(tmp_path / "rep"))
    assert {"d_speed.png", "speeds.png", "accuracy.png", "cur.png", "summary.md"} <= names
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "| vanilla | vanilla |" in text and "| balanced | balanced |" in text


def test_aggregate_is_mean_and_sample_std_per_policy():
    rows = [{"policy": "vanilla", "acc": a, "acc_m0": 0.5, "acc_m1": 0.5, "d_util": d, "final_d_speed": -0.2}
            for a, d in ((0.8, -0.4), (0.9, 0.2))]
    (table,) = aggregate(rows)
    assert table["policy"] == "vanilla" and table["seeds"] == 2
    assert table["acc"] == "0.8500 ± 0.0707"
    assert table["abs_d_util"] == "0.3000 ± 0.1414"        # |d_util| before averaging
    assert table["abs_final_d_speed"] == "0.2000 ± 0.0000"


def test_compare_trains_each_policy_and_resumes(tmp_path):
    data = tmp_path / "data"
    r = invoke("prep", "synthetic", "--out", data, "--classes", "3", "--per-class", "10", "--image-size", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 1, "device": "cpu"}))
    args = ["compare", "--data", str(data), "--out", str(tmp_path / "cmp"), "--policies", "vanilla,balanced",
            "--config", str(cfg), "--epochs", "2"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "cmp"
    assert {"vanilla-s0", "balanced-s0", "comparison.md", "d_speed.png", "cur.png"} <= set(os.listdir(out))
    text = (out / "comparison.md").read_text()
    assert "| vanilla | 1 |" in text and "| balanced | 1 |" in text and "random" not in text
    steps_before = (out / "balanced-s0" / "steps.csv").read_bytes()
    r = invoke(*args)                                   # finished runs are not trained again
    assert r.exit_code == 0, r.output
    assert (out / "balanced-s0" / "steps.csv").read_bytes() == steps_before


@pytest.mark.parametrize("flag, value", [("--seeds", "a,b"), ("--policies", "greedy")])
def test_bad_lists_are_one_error_line(flag, value, tmp_path):
    r = invoke("compare", "--data", tmp_path, "--out", tmp_path / "o", flag, value)
    assert r.exit_code == 2 and r.output.startswith("error: ")
