"""`mmtm report` on trained runs; `mmtm compare` on a tiny synthetic set: its tables, evidence, --collect, resume,
grid axes and baselines."""
import json
import math
import os

import pytest

from helpers import invoke
from mmtm.analysis import stats
from mmtm.analysis.compare import aggregate, paired_table, parse_axes, render
from mmtm.analysis.report import POOLED, STRATIFIED, d_util_floor, proxy_table, summary_rows


def test_report_writes_plots_and_summary(trained_runs, tmp_path):
    invoke("eval-cur", trained_runs / "vanilla")
    r = invoke("report", trained_runs / "vanilla", trained_runs / "balanced", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    names = set(os.listdir(tmp_path / "rep"))
    assert {"d_speed.png", "speeds.png", "accuracy.png", "cur.png", "d_speed_vs_d_util.png", "summary.md"} <= names
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "| vanilla | vanilla |" in text and "| balanced | balanced |" in text
    assert "| runs | d_speed | d_util | n | Spearman ρ [95% CI] | p |" in text
    assert "| within vanilla | d_speed_stage | d_util_last |" in text and f"| {POOLED} |" in text
    assert not (trained_runs / "vanilla" / "summary.json").exists()  # report only reads run folders


def row(policy, seed, acc, d):
    return {"cell": "", "run": f"{policy}-s{seed}", "policy": policy, "seed": seed, "acc": acc, "acc_last": acc,
            "d_util": d, "d_util_last": d, "d_speed_equal": -0.2, "d_speed_stage": -0.3}


def test_aggregate_and_paired_differences_per_policy():
    rows = [row("vanilla", 0, 0.8, -0.4), row("vanilla", 1, 0.9, 0.2), row("balanced", 0, 0.85, -0.1),
            row("balanced", 1, 0.8, 0.3)]
    vanilla, balanced = aggregate(rows, ("acc", "d_util"))
    assert (vanilla["policy"], vanilla["seeds"], balanced["policy"]) == ("vanilla", 2, "balanced")
    # t-interval with 1 df: 0.85 ± 12.706·0.05
    assert stats.fmt_described(vanilla["acc"]) == "0.850 ± 0.071 [0.215, 1.485]"
    assert vanilla["acc"]["n"] == 2 and vanilla["acc"]["ci_low"] == pytest.approx(0.85 - 12.7062 * 0.05, abs=1e-4)
    objects = {("", f"{p}-s{s}"): "1100" if p == "vanilla" else "1111" for p in ("vanilla", "balanced")
               for s in (0, 1)}
    (paired,) = paired_table(rows, objects)
    # per seed: acc +0.05, −0.10; |d_util| 0.1−0.4 = −0.3, 0.3−0.2 = +0.1; |d_speed_equal| 0, 0
    assert paired["comparison"] == "balanced − vanilla"
    assert paired["acc"]["mean"] == pytest.approx(-0.025) and paired["acc"]["p"] == 1.0 and paired["acc"]["k"] == 1
    assert stats.fmt_paired(paired["|d_util|"]).startswith("-0.100 [")
    assert paired["mcnemar"] == {"a_better": 0, "b_better": 0, "n": 2}  # two discordant objects only


def test_holm_runs_over_the_whole_paired_table_and_mcnemar_counts_each_direction():
    rows = [row(p, s, acc, d) for s in range(5)
            for p, acc, d in (("vanilla", 0.8, -0.5 - 0.01 * s), ("balanced", 0.8, -0.1), ("random", 0.8, -0.3))]
    # seed 0: balanced right on 12 objects vanilla misses; seed 1: random right on 12 that vanilla misses
    objects = {("", f"{p}-s{s}"): "0" * 12 for p in ("vanilla", "balanced", "random") for s in range(5)}
    objects[("", "balanced-s0")] = objects[("", "random-s1")] = "1" * 12
    table = paired_table(rows, objects)
    family = [r[label]["p"] for r in table for label in ("acc", "acc_last", "|d_util|", "|d_util_last|",
                                                         "|d_speed_equal|", "|d_speed_stage|")]
    adjusted = [r[label]["p_holm"] for r in table for label in ("acc", "acc_last", "|d_util|", "|d_util_last|",
                                                                "|d_speed_equal|", "|d_speed_stage|")]
    assert len(family) == 18 and adjusted == stats.holm(family)
    by = {r["comparison"]: r for r in table}
    assert by["balanced − vanilla"]["|d_util|"]["p"] == 2 / 32  # every seed more balanced: exact 2/2^5
    assert by["balanced − vanilla"]["|d_util|"]["p_holm"] > by["balanced − vanilla"]["|d_util|"]["p"]
    assert by["balanced − vanilla"]["mcnemar"] == {"a_better": 1, "b_better": 0, "n": 5}
    assert by["random − balanced"]["mcnemar"] == {"a_better": 1, "b_better": 1, "n": 5}  # s0 for B, s1 for A


def test_proxy_rows_within_each_policy_stratified_and_pooled():
    rows = []
    for s in range(5):  # within each policy d_util rises with d_speed; balanced shifts both
        rows.append(row("vanilla", s, 0.9, -0.5 + 0.05 * s) | {"d_speed_final": 0.1 * s, "d_speed_stage": 0.1 * s})
        rows.append(row("balanced", s, 0.9, 0.4 + 0.05 * s) | {"d_speed_final": -1 + 0.1 * s,
                                                                "d_speed_stage": -1 + 0.1 * s})
    table = [r for r in proxy_table(rows) if (r["d_speed"], r["d_util"]) == ("d_speed_final", "d_util")]
    by = {r["runs"]: r for r in table}
    assert list(by) == ["within vanilla", "within balanced", STRATIFIED, POOLED]
    assert by["within vanilla"]["rho"] == 1.0 and by["within vanilla"]["p"] == pytest.approx(2 / 120)  # exact, n = 5
    assert by["within vanilla"]["ci_low"] is None and by["within vanilla"]["p_error"] == 0.0
    assert by[STRATIFIED]["rho"] == 1.0 and by[STRATIFIED]["n"] == 10
    assert by[POOLED]["rho"] < 0  # the policies' shift reverses the pooled ranking


def test_the_d_util_floor_from_the_best_classifier_of_each_views_mark():
    # the rear mark's best classifier scores 0.4 on these objects; A(f1) = 0.8 → u(m0|m1) ≥ 0.5; with
    # u(m1|m0) = 0.1, |d_util| ≥ 0.4
    assert d_util_floor(0.9, 0.8, 0.1, 0.7, [1.0, 0.4]) == pytest.approx(0.4)
    assert d_util_floor(0.9, 0.8, 0.1, 0.7, [1.0, 1.0]) == 0.0           # equally informative views: no floor
    assert math.isnan(d_util_floor(0.9, 0.8, 0.1, 0.7, None))


def test_the_floor_uses_the_split_the_cur_was_measured_on():
    run = run_of([0.5, 0.2], 0, [0.5, 0.4])
    run["cur"] = {"acc_m0": 0.9, "acc_m1": 0.8, "u_m1_given_m0": 0.1, "u_m0_given_m1": 0.7, "d_util": -0.6,
                  "split": "test"}
    run["summary"] |= {"view_limits": [1.0, 0.4], "view_best": {"test": [1.0, 0.44], "val": [1.0, 0.3]}}
    (r,), _, _ = summary_rows([run])
    assert r["d_util_floor"] == pytest.approx(1 - 0.44 / 0.8 - 0.1)  # the test split's 0.44, not the design's 0.4
    del run["summary"]["view_best"]
    (r,), _, _ = summary_rows([run])
    assert math.isnan(r["d_util_floor"])  # no recorded best classifier: no floor, rather than a wrong one


def run_of(regular_d, rebalanced, epochs_d):
    return {"name": "r", "config": {"policy": "x", "seed": 0, "single_view": None}, "cur": None, "cur_last": None,
            "epochs": [{"d_speed": str(d), "val_acc": "0.5", "seconds": "1"} for d in epochs_d],
            "summary": {"regular_steps": len(regular_d), "steps": len(regular_d) + rebalanced,
                        "rebalance_m0_steps": 0, "rebalance_m1_steps": rebalanced,
                        "d_speed_by_regular_step": regular_d, "trace": {"d_speed": [regular_d[-1]]}}}


def test_d_speed_at_equal_regular_steps_and_at_an_equal_stage():
    few = run_of([0.5, 0.2], 2, [0.5, 0.4, 0.2, 0.2])
    many = run_of([0.9, 0.7, 0.4, 0.1], 0, [0.8, 0.6, 0.3, 0.1])
    rows, n_equal, stage = summary_rows([few, many])
    assert (n_equal, stage) == (2, 1)  # 4 epochs: half of training ends with epoch index 1
    assert [r["d_speed_equal"] for r in rows] == [0.2, 0.7]
    assert [r["d_speed_stage"] for r in rows] == [0.4, 0.6]
    assert [r["d_speed_final"] for r in rows] == [0.2, 0.1]
    assert [(r["regular_steps"], r["rebalance_steps"], r["rebalance_m1_steps"]) for r in rows] == [(2, 2, 2), (4, 0, 0)]


def test_grid_axes_are_typed_and_bad_ones_refused():
    assert parse_axes(["alpha=0.01,0.05", "views=0,6,0,3"]) == {"alpha": [0.01, 0.05], "views": [(0, 6), (0, 3)]}
    assert parse_axes(["rebalance-steps=5,10"]) == {"rebalance_steps": [5, 10]}


@pytest.mark.parametrize("setting, message", [
    ("nonsense=1", "not a setting"), ("seed=1,2", "compare sets it itself"), ("alpha", "KEY=V1"),
    ("alpha=x", "not a number"), ("views=0,6,3", "like --views, 0,6,0,3"), ("alpha=0.1,0.1", "repeats"),
    ("epochs=1.5", "whole number")])
def test_bad_axes_are_one_error_line(setting, message, tmp_path):
    r = invoke("compare", "--data", tmp_path, "--out", tmp_path / "o", "--set", setting)
    assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value", [("--seeds", "a,b"), ("--seeds", "1,1"), ("--gpus", "0,x"),
                                        ("--policies", "greedy"), ("--jobs", "0")])
def test_bad_lists_are_one_error_line(flag, value, tmp_path):
    r = invoke("compare", "--data", tmp_path, "--out", tmp_path / "o", flag, value)
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    data = root / "data"
    r = invoke("prep", "synthetic", "--out", data, "--classes", "3", "--per-class", "10", "--image-size", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps({"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 0, "device": "cpu",
                               "precise_bn": 2,
                               "max_steps_per_epoch": 3}))
    args = ["compare", "--data", str(data), "--out", str(root / "cmp"), "--policies", "vanilla,balanced",
            "--seeds", "0,1", "--config", str(cfg), "--epochs", "2", "--baselines"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return root / "cmp", args


def test_compare_trains_each_policy_and_baseline_and_resumes(tiny_compare):
    out, args = tiny_compare
    assert {"vanilla-s0", "balanced-s1", "single-view0-s0", "single-view1-s1", "comparison.md", "comparison.json",
            "sweep.json", "d_speed.png", "cur_by_policy.png", "d_speed_vs_d_util.png"} <= set(os.listdir(out))
    assert {"cur.json", "cur-last.json", "summary.json"} <= set(os.listdir(out / "balanced-s1"))
    text = (out / "comparison.md").read_text()
    assert "| vanilla | 2 |" in text and "| balanced | 2 |" in text and "random" not in text
    assert "| balanced − vanilla |" in text and "## Each view alone" in text and "| single-view1 | 2 |" in text
    summary = json.loads((out / "comparison.json").read_text())
    assert len(summary["runs"]) == 8 and summary["paired"][0]["comparison"] == "balanced − vanilla"
    assert summary["primary"]["comparison"] == "balanced − vanilla" and summary["primary"]["measure"] == "|d_util|"
    assert "Primary comparison" in text and "(Holm " in text and "A/B better" in text
    assert [b["view alone"] for b in summary["baselines"]] == ["single-view0", "single-view1"]
    assert summary["equal_regular_steps"] == min(r["regular_steps"] for r in summary["runs"]
                                                 if not r["policy"].startswith("single"))
    assert {r["launcher"] for r in summary["runs"]} == {"local"} and all(r["host"] for r in summary["runs"])
    sv = json.loads((out / "single-view1-s0" / "config.json").read_text())
    assert (sv["single_view"], sv["policy"], sv["loss"]) == (1, "vanilla", "fused")
    steps_before = (out / "balanced-s0" / "steps.csv").read_bytes()
    r = invoke(*args)                                   # finished runs are not trained again
    assert r.exit_code == 0, r.output
    assert (out / "balanced-s0" / "steps.csv").read_bytes() == steps_before


def test_collect_rebuilds_the_comparison_byte_for_byte_from_evidence(tiny_compare, tmp_path):
    out, _ = tiny_compare
    r = invoke("compare", "--collect", out, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    evidence = tmp_path / "a" / "runs"
    assert sorted(os.listdir(evidence / "vanilla-s0")) == ["config.json", "cur-last.json", "cur.json", "epochs.csv",
                                                           "summary.json"]
    r = invoke("compare", "--collect", evidence, "--out", tmp_path / "b")  # from the evidence alone
    assert r.exit_code == 0, r.output
    for name in ("comparison.json", "comparison.md"):
        assert (tmp_path / "b" / name).read_bytes() == (out / name).read_bytes()


def test_paired_across_cells_sets_each_policy_against_itself_in_the_first_cell():
    rows = []
    for cell, shift in (("lr=0.05", 0.0), ("lr=0.001", -0.1)):
        for policy in ("vanilla", "pmr"):
            for seed in (0, 1):
                r = row(policy, seed, 0.9 + shift + 0.01 * seed, -0.5)
                rows.append({**r, "cell": cell})
    objects = {(r["cell"], r["run"]): "10" for r in rows}
    labels = [p["comparison"] for p in paired_table(rows, objects)]
    assert labels == ["pmr − vanilla", "pmr − vanilla", "vanilla: lr=0.001 − lr=0.05", "pmr: lr=0.001 − lr=0.05"]
    across = paired_table(rows, objects)[-1]
    assert across["acc"]["mean"] == pytest.approx(-0.1) and across["cell"] == "lr=0.001"


MEASURE_KEYS = {"mean", "sd", "ci_low", "ci_high", "n"}


def numbers_only(value) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def test_comparison_json_holds_numbers_in_its_schema_and_renders_the_markdown(tiny_compare):
    out, _ = tiny_compare
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["schema_version"] == 1
    for table, measures in (("accuracy", ("acc", "acc_last", "acc_m0", "acc_m1")),
                            ("imbalance", ("d_util", "d_util_floor", "d_speed_final")),
                            ("baselines", ("acc", "acc_last", "epochs_to_90"))):
        for r in doc[table]:
            for m in measures:
                assert set(r[m]) == MEASURE_KEYS and all(numbers_only(v) for v in r[m].values()), (table, m)
    assert all(b["best_view_accuracy"] == doc["view_best"][i] for i, b in enumerate(doc["baselines"]))
    for r in doc["paired"]:
        for m in ("acc", "acc_last", "|d_util|", "|d_util_last|", "|d_speed_equal|", "|d_speed_stage|"):
            assert set(r[m]) == MEASURE_KEYS | {"p", "p_error", "p_holm", "k"}
            assert all(numbers_only(v) for v in r[m].values())
        assert set(r["mcnemar"]) == {"a_better", "b_better", "n"}
    for r in doc["proxy"]:
        assert all(numbers_only(r[k]) for k in ("n", "rho", "ci_low", "ci_high", "p", "p_error"))
    assert all(numbers_only(r["minutes_per_run"]) for r in doc["cost"])
    text = json.dumps({k: doc[k] for k in ("accuracy", "imbalance", "paired", "proxy", "baselines", "cost")})
    assert "±" not in text and "NaN" not in (out / "comparison.json").read_text()
    assert render(doc) == (out / "comparison.md").read_text()  # the markdown is made from the JSON alone


def test_a_run_copied_into_a_grid_cell_takes_that_cell(tiny_compare, tmp_path):
    """Reusing a finished run in another comparison: compare keeps its results and files it under its new cell."""
    import shutil

    from mmtm.analysis import evidence

    out, _ = tiny_compare
    run = shutil.copytree(out / "vanilla-s0", tmp_path / "lr=0.05" / "vanilla-s0")
    before = (run / "steps.csv").read_bytes()
    evidence.place(run, {"lr": "0.05"}, "demo")
    assert json.loads((run / "summary.json").read_text())["cell"] == {"lr": "0.05"}
    assert evidence.is_summarised(run) and (run / "steps.csv").read_bytes() == before


def test_report_warns_of_a_cur_json_older_than_its_checkpoint(trained_runs, tmp_path):
    import shutil

    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "run", ignore=shutil.ignore_patterns("cur*.json"))
    assert invoke("eval-cur", run, "--device", "cpu").exit_code == 0
    r = invoke("report", run, "--out", tmp_path / "a")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    later = (run / "cur.json").stat().st_mtime + 60
    os.utime(run / "best.pt", (later, later))  # as a resumed run that found a better epoch after eval-cur
    r = invoke("report", run, "--out", tmp_path / "b")
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert r.exit_code == 0 and len(warnings) == 1, r.output
    assert str(run / "cur.json") in warnings[0] and "older than" in warnings[0] and "eval-cur" in warnings[0]


def test_a_single_view_run_reports_a_dash_where_a_measure_does_not_apply(synthetic_data, tmp_path):
    """A single-view run has no d_speed and no u(·|·): `—`, not nan, in summary.md and in eval-cur's table; a
    report of single-view runs alone draws what applies to them."""
    from helpers import TINY

    r = invoke("train", "--data", synthetic_data, "--out", tmp_path / "sv", "--epochs", 1, *TINY,
               "--single-view", 6)
    assert r.exit_code == 0, r.output
    r = invoke("report", tmp_path / "sv", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    row = next(line for line in (tmp_path / "rep" / "summary.md").read_text().splitlines()
               if line.startswith("| sv |"))
    assert "nan" not in row and row.count("| — ") == 7  # u(m1|m0), u(m0|m1), d_util, d_util_last, 3 × d_speed
    assert os.listdir(tmp_path / "rep") and (tmp_path / "rep" / "accuracy.png").is_file()
    r = invoke("eval-cur", tmp_path / "sv")
    assert r.exit_code == 0 and "nan" not in r.output and "—" in r.output, r.output

def test_compare_shows_probe_columns_and_flags_heads_from_different_losses(tmp_path, figures_not_drawn):
    """On committed evidence (pmr under `fused`, vanilla under `heads`): the loss note names both losses; probe
    accuracies in the runs' cur.json become columns of the accuracy and run tables and fields of comparison.json."""
    import shutil
    from pathlib import Path

    evidence = shutil.copytree(Path(__file__).resolve().parents[1] / "docs" / "methods" / "pmr-lr" / "runs",
                               tmp_path / "runs")
    for k, cur_file in enumerate(sorted(evidence.rglob("cur.json"))):
        cur = json.loads(cur_file.read_text())
        cur |= {"probe_m0": 0.5 + k / 100, "probe_m1": 0.25, "probe_m0_only": 0.5, "probe_m1_only": 0.125}
        cur_file.write_text(json.dumps(cur))
    r = invoke("compare", "--collect", evidence, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "**Head accuracies from different task losses**: `heads`: vanilla; `fused`: pmr." in md
    assert "| acc_m0 | acc_m1 | probe_m0 | probe_m1 | probe_m0_only | probe_m1_only |" in md
    assert "| acc_m0 | acc_m1 | probe_m0 | probe_m1 | probe_m0_only | probe_m1_only | u_m1_given_m0 |" in md
    out = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert out["task_losses"] == {"heads": ["vanilla"], "fused": ["pmr"]}
    assert sorted(r["probe_m1_only"] for r in out["runs"]) == [0.125] * len(out["runs"])


def test_compare_ends_with_a_summary_table_the_sign_and_the_primary_comparison(tmp_path, figures_not_drawn):
    """The terminal gets the result, not only a file name: per policy acc, d_util, d_speed, re-balancing steps, what
    the sign means, the primary comparison, and where the files are — the numbers those of comparison.json."""
    from pathlib import Path

    from mmtm.analysis import stats

    r = invoke("compare", "--collect", Path(__file__).resolve().parents[1] / "docs" / "finding" / "runs",
               "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c" / "comparison.json").read_text())
    balanced = next(x for x in doc["imbalance"] if x["policy"] == "balanced")
    row = next(line for line in r.output.splitlines() if line.startswith("| balanced |"))
    assert stats.fmt_described(balanced["d_util"]) in row
    assert f"{balanced['rebalance_m1_steps']['mean']:.0f} |" in row
    assert "leans on view 0 (m0); > 0: on view 6 (m1)" in r.output
    primary = stats.fmt_paired(doc["primary"])
    assert f"primary comparison, balanced − vanilla in |d_util| (best.pt): {primary}" in r.output
    assert r.output.rstrip().splitlines()[-1].startswith(f"wrote {tmp_path / 'c' / 'comparison.md'} (tables)")


def test_a_grid_over_views_labels_each_cell_with_its_own_views(tmp_path, figures_not_drawn):
    """Baseline rows carry their cell's view, and the summary's sign line names no one pair for a grid over views."""
    import shutil
    from pathlib import Path

    evidence = Path(__file__).resolve().parents[1] / "docs" / "view-pairs" / "runs"
    runs = tmp_path / "runs"
    for cell in ("views=0-1", "views=0-6"):
        for name in ("vanilla-s0", "balanced-s0"):
            shutil.copytree(evidence / cell / name, runs / cell / name)
        base = runs / cell / "single-view1-s0"  # a baseline of the cell's second view, from its vanilla run
        shutil.copytree(evidence / cell / "vanilla-s0", base)
        for file in ("config.json", "summary.json"):
            record = json.loads((base / file).read_text())
            if file == "config.json":
                record |= {"single_view": 1, "loss": "fused"}
            else:
                record["name"] = "single-view1-s0"
            (base / file).write_text(json.dumps(record))
    r = invoke("compare", "--collect", runs, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert {(b["cell"], b["view"]) for b in doc["baselines"]} == {("views=0-1", 1), ("views=0-6", 6)}
    assert "leans on the first view of its cell (m0)" in r.output
