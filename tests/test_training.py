"""The training loop end to end on CPU: the run folder it writes, the step modes of each policy, bad input."""
import json
import os

import pytest

from helpers import TINY, invoke, read_csv
from mmtm.checkpoint import load_checkpoint


def test_run_folder_has_config_logs_and_checkpoints(trained_runs):
    for name in ("vanilla", "balanced", "random"):
        run = trained_runs / name
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


def test_balanced_rebalances_and_vanilla_never_does(trained_runs):
    modes = {name: [s["mode"] for s in read_csv(trained_runs / name / "steps.csv")] for name in ("vanilla", "balanced", "random")}
    assert set(modes["vanilla"]) == {"regular"}
    steps_per_epoch = len(modes["balanced"]) // 2
    assert set(modes["balanced"][:steps_per_epoch]) == {"regular"}          # warm-up epoch
    assert set(modes["balanced"][steps_per_epoch:]) & {"rebalance_m0", "rebalance_m1"}
    assert set(modes["random"][:steps_per_epoch]) == {"regular"}
    d = [float(s["d_speed"]) for s in read_csv(trained_runs / "balanced" / "steps.csv")]
    assert all(x == x for x in d[1:])                                         # finite after the first step


@pytest.mark.parametrize("case", ["not_prepared", "bad_view", "exists", "nothing_to_resume"])
def test_bad_input_is_one_error_line(case, synthetic_data, trained_runs, tmp_path):
    args = {"not_prepared": ["--data", tmp_path, "--out", tmp_path / "r"],
            "bad_view": ["--data", synthetic_data, "--out", tmp_path / "r", "--views", "0,12"],
            "exists": ["--data", synthetic_data, "--out", trained_runs / "vanilla"],
            "nothing_to_resume": ["--data", synthetic_data, "--out", tmp_path / "r", "--resume"]}[case]
    r = invoke("train", *args, *TINY)
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "last.pt").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synthetic_data, tmp_path, monkeypatch):
    import mmtm.training as engine

    real = engine.two_head_loss
    calls = {"n": 0}

    def poisoned(l0, l1, y):
        calls["n"] += 1
        loss = real(l0, l1, y)
        return loss * float("nan") if calls["n"] > 8 else loss

    monkeypatch.setattr(engine, "two_head_loss", poisoned)
    run = tmp_path / "nan"
    r = invoke("train", "--data", synthetic_data, "--out", run, "--epochs", 3, *TINY)
    assert r.exit_code == 2 and "loss is nan at step 8" in r.output
    assert load_checkpoint(run / "last.pt")["epoch"] >= 1


def test_run_records_an_absolute_data_path(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.chdir(synthetic_data.parent)
    r = invoke("train", "--data", synthetic_data.name, "--out", tmp_path / "rel", "--epochs", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["data"] == str(synthetic_data.resolve())
    monkeypatch.chdir(tmp_path)
    r = invoke("eval-cur", tmp_path / "rel")
    assert r.exit_code == 0, r.output



def test_run_files_get_the_mode_of_any_file_the_user_writes(trained_runs):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "best.pt", "last.pt", "steps.csv", "epochs.csv"):
        assert os.stat(trained_runs / "vanilla" / name).st_mode & 0o777 == 0o666 & ~umask, name
