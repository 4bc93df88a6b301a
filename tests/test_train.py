"""End to end on CPU: prep synthetic (tiny) → train vanilla / balanced / random → run folder; resume; DDP."""
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from mmtm.checkpoint import load_checkpoint

runner = CliRunner()
BIN = Path(sys.executable).parent
TINY = ["--preset", "demo", "--width", "4", "--batch-size", "4", "--loader", "torch", "--threads", "1",
        "--device", "cpu", "--lr", "0.05"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "synthetic"
    r = invoke("prep", "synthetic", "--out", out, "--classes", "3", "--per-class", "16", "--image-size", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, flags in (("vanilla", []), ("balanced", ["--balanced", "--alpha", "0"]), ("random", ["--random"])):
        r = invoke("train", "--data", data, "--out", root / name, "--epochs", 2, *TINY, *flags)
        assert r.exit_code == 0, r.output
    return root


def test_run_folder_has_config_logs_and_checkpoints(runs):
    for name in ("vanilla", "balanced", "random"):
        run = runs / name
        assert {"config.json", "steps.csv", "epochs.csv", "last.pt", "best.pt"} <= set(os.listdir(run))
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["policy"] == name and cfg["width"] == 4 and cfg["views"] == [0, 6]
        steps = read_csv(run / "steps.csv")
        assert list(steps[0])[:7] == ["step", "epoch", "mode", "loss", "s_m1_m0", "s_m0_m1", "d_speed"]
        assert [int(s["step"]) for s in steps] == list(range(len(steps)))
        epochs = read_csv(run / "epochs.csv")
        assert [int(e["epoch"]) for e in epochs] == [0, 1]
        for key in ("lr", "train_loss", "train_acc", "val_acc", "val_acc_m0", "val_acc_m1"):
            assert 0 <= float(epochs[-1][key]) <= 10
        ckpt = load_checkpoint(run / "last.pt")
        assert ckpt["epoch"] == 2 and ckpt["step"] == len(steps)
        assert {"optimizer", "scheduler", "policy", "speed", "rng"} <= set(ckpt)


def test_balanced_rebalances_and_vanilla_never_does(runs):
    modes = {name: [s["mode"] for s in read_csv(runs / name / "steps.csv")] for name in ("vanilla", "balanced", "random")}
    assert set(modes["vanilla"]) == {"regular"}
    steps_per_epoch = len(modes["balanced"]) // 2
    assert set(modes["balanced"][:steps_per_epoch]) == {"regular"}          # warm-up epoch
    assert set(modes["balanced"][steps_per_epoch:]) & {"rebalance_m0", "rebalance_m1"}
    assert set(modes["random"][:steps_per_epoch]) == {"regular"}
    d = [float(s["d_speed"]) for s in read_csv(runs / "balanced" / "steps.csv")]
    assert all(x == x for x in d[1:])                                         # finite after the first step


def test_eval_cur_writes_every_key_and_leaves_checkpoint_untouched(runs):
    run = runs / "balanced"
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


def test_report_writes_plots_and_summary(runs, tmp_path):
    invoke("eval-cur", runs / "vanilla")
    r = invoke("report", runs / "vanilla", runs / "balanced", "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    names = set(os.listdir(tmp_path / "rep"))
    assert {"d_cls.png", "speeds.png", "accuracy.png", "cur.png", "summary.md"} <= names
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "| vanilla | vanilla |" in text and "| balanced | balanced |" in text


@pytest.mark.parametrize("case", ["not_prepared", "bad_view", "exists", "nothing_to_resume"])
def test_bad_input_is_one_error_line(case, data, runs, tmp_path):
    args = {"not_prepared": ["--data", tmp_path, "--out", tmp_path / "r"],
            "bad_view": ["--data", data, "--out", tmp_path / "r", "--views", "0,12"],
            "exists": ["--data", data, "--out", runs / "vanilla"],
            "nothing_to_resume": ["--data", data, "--out", tmp_path / "r", "--resume"]}[case]
    r = invoke("train", *args, *TINY)
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "last.pt").exists()


def test_resume_on_other_classes_is_refused(data, runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (other / "dataset.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    shutil.copytree(runs / "vanilla", run)
    r = invoke("train", "--data", other, "--out", run, "--resume", "--epochs", 3)
    assert r.exit_code == 2 and "classes differ" in r.output


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    import mmtm.engine as engine

    real = engine.two_head_loss
    calls = {"n": 0}

    def poisoned(l0, l1, y):
        calls["n"] += 1
        loss = real(l0, l1, y)
        return loss * float("nan") if calls["n"] > 8 else loss

    monkeypatch.setattr(engine, "two_head_loss", poisoned)
    run = tmp_path / "nan"
    r = invoke("train", "--data", data, "--out", run, "--epochs", 3, *TINY)
    assert r.exit_code == 2 and "loss is nan at step 8" in r.output
    assert load_checkpoint(run / "last.pt")["epoch"] >= 1


def _train_cmd(data, out, *extra):
    return [str(BIN / "mmtm"), "train", "--data", str(data), "--out", str(out), "--epochs", "5", "--balanced",
            "--alpha", "0", *TINY, *extra]


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(data, full), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(data, cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = load_checkpoint(cut / "last.pt")["epoch"]
    assert done < 5
    subprocess.run(_train_cmd(data, cut, "--resume"), check=True, env=env, capture_output=True)

    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(read_csv(cut / "epochs.csv")) == drop(read_csv(full / "epochs.csv"))
    assert read_csv(cut / "steps.csv") == read_csv(full / "steps.csv")
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_two_process_ddp_on_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", *_train_cmd(data, out)]
    cmd[cmd.index("--epochs") + 1] = "2"
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = read_csv(out / "steps.csv")
    n_train = json.loads((data / "dataset.json").read_text())["counts"]["train"]
    assert len(steps) == 2 * ((n_train // 2) // 4)      # each rank: half the split, batches of 4
    assert {s["mode"] for s in steps} > {"regular"}
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


def test_eval_cur_gives_the_same_numbers_with_either_loader(runs):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    results = {}
    for backend in ("torch", "dali"):
        r = invoke("eval-cur", runs / "random", "--loader", backend, "--json")
        assert r.exit_code == 0, r.output
        results[backend] = json.loads((runs / "random" / "cur.json").read_text())
    for key in ("acc", "acc_m0", "acc_m1", "acc_m0_only", "acc_m1_only", "d_util"):
        assert results["dali"][key] == pytest.approx(results["torch"][key], abs=1e-6), key


def test_run_records_an_absolute_data_path(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data.parent)
    r = invoke("train", "--data", data.name, "--out", tmp_path / "rel", "--epochs", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["data"] == str(data.resolve())
    monkeypatch.chdir(tmp_path)
    r = invoke("eval-cur", tmp_path / "rel")
    assert r.exit_code == 0, r.output
