"""`mmtm report` on trained runs; `mmtm compare` on a tiny synthetic set, and the mean ± std aggregation."""
import json
import math
import os

import pytest

from helpers import invoke
from mmtm.compare import aggregate, paired_against
from mmtm.report import d_speed_after_regular_steps, summary_rows


def test_report_writes_plots_and_summary(trained_runs, tmp_path):
    invoke("eval-cur", trained_runs / "vanilla")
    r = invoke("report", trained_runs / "vanilla", trained_runs / "balanced", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    names = set(os.listdir(tmp_path / "rep"))
    assert {"d_speed.png", "speeds.png", "accuracy.png", "cur.png", "summary.md"} <= names
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "| vanilla | vanilla |" in text and "| balanced | balanced |" in text


def test_aggregate_and_paired_differences_per_policy():
    rows = [{"policy": policy, "seed": seed, "acc": acc, "acc_last": acc, "d_util": d, "d_util_last": d,
             "d_speed_equal": -0.2}
            for policy, seed, acc, d in (("vanilla", 0, 0.8, -0.4), ("vanilla", 1, 0.9, 0.2),
                                         ("balanced", 0, 0.85, -0.1), ("balanced", 1, 0.8, 0.3))]
    vanilla, balanced = aggregate(rows, ("acc", "d_util"))
    assert (vanilla["policy"], vanilla["seeds"], balanced["policy"]) == ("vanilla", 2, "balanced")
    assert vanilla["acc"] == "0.850 ± 0.071 [0.800, 0.900]"
    (paired,) = paired_against(rows)
    # per seed: acc +0.05, −0.10; |d_util| 0.1−0.4 = −0.3, 0.3−0.2 = +0.1; |d_speed_equal| 0, 0
    assert paired["policy"] == "balanced"
    assert paired["acc"].startswith("-0.025 [") and paired["acc"].endswith("1/2")
    assert paired["|d_util|"].startswith("-0.100 [-0.300, +0.100]")


def run_of(modes_and_d):
    return {"name": "r", "config": {"policy": "x", "seed": 0}, "epochs": [{}], "cur": None, "cur_last": None,
            "steps": [{"mode": m, "d_speed": str(d), "d_speed_window": str(d)} for m, d in modes_and_d]}


def test_d_speed_is_compared_at_an_equal_number_of_regular_steps():
    few = run_of([("regular", 0.5), ("rebalance_m1", 0.5), ("rebalance_m1", 0.5), ("regular", 0.2)])
    many = run_of([("regular", 0.9), ("regular", 0.7), ("regular", 0.4), ("regular", 0.1)])
    assert d_speed_after_regular_steps(many, 2) == 0.7 and math.isnan(d_speed_after_regular_steps(few, 3))
    rows, n_equal = summary_rows([few, many])
    assert n_equal == 2
    assert [r["d_speed_equal"] for r in rows] == [0.2, 0.7]
    assert [r["d_speed_final"] for r in rows] == [0.2, 0.1]
    assert [(r["regular_steps"], r["rebalance_steps"]) for r in rows] == [(2, 2), (4, 0)]


def test_compare_trains_each_policy_and_resumes(tmp_path):
    data = tmp_path / "data"
    r = invoke("prep", "synthetic", "--out", data, "--classes", "3", "--per-class", "10", "--image-size", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 1, "device": "cpu"}))
    args = ["compare", "--data", str(data), "--out", str(tmp_path / "cmp"), "--policies", "vanilla,balanced",
            "--seeds", "0,1", "--config", str(cfg), "--epochs", "2"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "cmp"
    assert {"vanilla-s0", "balanced-s1", "comparison.md", "comparison.json", "d_speed.png", "cur_by_policy.png",
            "d_speed_by_regular_steps.png"} <= set(os.listdir(out))
    assert {"cur.json", "cur-last.json"} <= set(os.listdir(out / "balanced-s1"))
    text = (out / "comparison.md").read_text()
    assert "| vanilla | 2 |" in text and "| balanced | 2 |" in text and "random" not in text
    assert "## Paired differences against vanilla" in text
    summary = json.loads((out / "comparison.json").read_text())
    assert len(summary["runs"]) == 4 and summary["paired_against_vanilla"][0]["policy"] == "balanced"
    assert summary["equal_regular_steps"] == min(r["regular_steps"] for r in summary["runs"])
    steps_before = (out / "balanced-s0" / "steps.csv").read_bytes()
    r = invoke(*args)                                   # finished runs are not trained again
    assert r.exit_code == 0, r.output
    assert (out / "balanced-s0" / "steps.csv").read_bytes() == steps_before


@pytest.mark.parametrize("flag, value", [("--seeds", "a,b"), ("--policies", "greedy")])
def test_bad_lists_are_one_error_line(flag, value, tmp_path):
    r = invoke("compare", "--data", tmp_path, "--out", tmp_path / "o", flag, value)
    assert r.exit_code == 2 and r.output.startswith("error: ")
