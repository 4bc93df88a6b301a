"""The training loop end to end on CPU: the run folder it writes, the step modes of each policy, bad input."""
import json
import os

import pytest
import torch

from helpers import TINY, invoke, read_csv
from mmtm.training.checkpoint import load_checkpoint


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
    modes = {name: [s["mode"] for s in read_csv(trained_runs / name / "steps.csv")]
             for name in ("vanilla", "balanced", "random")}
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
    import mmtm.science.network as network  # where every policy's task loss comes from

    real = network.two_head_loss
    calls = {"n": 0}

    def poisoned(l0, l1, y):
        calls["n"] += 1
        loss = real(l0, l1, y)
        return loss * float("nan") if calls["n"] > 8 else loss

    monkeypatch.setattr(network, "two_head_loss", poisoned)
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



def test_seed_k_of_every_policy_starts_from_the_same_weights(synthetic_data):
    """Paired comparisons rest on this: the policy does not change the initial weights or the data order."""
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.config import resolve
    from mmtm.training.hardware import Distributed
    from mmtm.training.loop import build_trainer

    states = [build_trainer(resolve("demo", width=4, policy=p, seed=3), 3, torch.device("cpu"), Distributed())
              .net.state_dict() for p in ("vanilla", "balanced", "random", "flipped")]
    assert all(torch.equal(s[k], states[0][k]) for s in states[1:] for k in states[0])
    other = build_trainer(resolve("demo", width=4, seed=4), 3, torch.device("cpu"), Distributed()).net.state_dict()
    assert not torch.equal(other["branch0.conv1.weight"], states[0]["branch0.conv1.weight"])
    orders = [[b.index.tolist() for b in two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=3,
                                                         backend="torch", device="cpu", num_threads=1)]
              for _ in range(2)]
    assert orders[0] == orders[1]


def replay_modes(steps, policy):
    """The modes `policy` picks when fed the logged signal: the run's modes if the loop wired it correctly."""
    modes = []
    for s in steps:
        mode = policy.next_mode(int(s["epoch"]))
        modes.append(mode)
        policy.observe(mode, float(s["d_speed_signal"]), int(s["epoch"]))
    return modes


@pytest.mark.parametrize("flags, signal_column", [([], "d_speed"),
                                                   (["--speed-signal", "window", "--speed-window", "5"],
                                                    "d_speed_window")])
def test_policy_reads_the_configured_signal_and_the_views_are_logged(synthetic_data, tmp_path, flags, signal_column):
    from mmtm.training.policy import BalancedPolicy

    run = tmp_path / "run"
    r = invoke("train", "--data", synthetic_data, "--out", run, "--epochs", 3, "--balanced", "--alpha", "0.001",
               "--plateau-on", "regular", *TINY, *flags)
    assert r.exit_code == 0, r.output
    steps = read_csv(run / "steps.csv")
    assert all(s["d_speed_signal"] == s[signal_column] for s in steps)
    assert [s["mode"] for s in steps] == replay_modes(steps, BalancedPolicy(alpha=0.001))
    regular = [s for s in steps if s["mode"] == "regular"]
    assert all(s["d_speed_step"] == "nan" for s in steps if s["mode"] != "regular")
    assert all(s["d_speed_step"] != "nan" for s in regular)
    epochs = read_csv(run / "epochs.csv")
    assert int(epochs[-1]["regular_steps"]) == len(regular)
    losses = [float(s["loss"]) for s in steps if s["epoch"] == "2" and s["mode"] == "regular"]
    assert float(epochs[-1]["train_loss_regular"]) == pytest.approx(sum(losses) / len(losses))
    assert json.loads((run / "config.json").read_text())["plateau_on"] == "regular"


METHOD_FLAGS = {"ogm-ge": [], "g-blending": ["--gb-interval", "1"], "moddrop": ["--moddrop-p", "0.5"], "pmr": []}


@pytest.mark.parametrize("policy", sorted(METHOD_FLAGS))
def test_other_papers_methods_train_in_the_one_loop_and_pass_eval_cur(synthetic_data, trained_runs, tmp_path, policy):
    run = tmp_path / policy
    r = invoke("train", "--data", synthetic_data, "--out", run, "--epochs", 2, "--policy", policy, *TINY,
               *METHOD_FLAGS[policy])
    assert r.exit_code == 0, r.output
    steps = read_csv(run / "steps.csv")
    assert {s["mode"] for s in steps} == {"regular"} and all(s["d_speed"] != "nan" for s in steps)  # CLS observed
    r = invoke("eval-cur", run)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "cur.json").read_text())["policy"] == policy
    # the task loss its authors trained with, named in config.json
    assert json.loads((run / "config.json").read_text())["loss"] == ("heads" if policy == "moddrop" else "fused")
    state = load_checkpoint(run / "last.pt")["policy"]
    if policy == "g-blending":  # estimated before epochs 0 and 1: weights of the three heads, from copies
        assert state["weights"].sum().item() == pytest.approx(1.0) and state["measured"].shape == (2, 2, 3)
    if policy == "pmr":  # one prototype per class and branch, width-4 ResNet: 32-dim features
        assert [p.shape for p in state["protos"]] == [(3, 32), (3, 32)]
    if policy in ("ogm-ge", "moddrop"):  # its own seeded generator, saved for an exact resume
        assert state["generator"].dtype == torch.uint8
    vanilla = load_checkpoint(trained_runs / "vanilla" / "last.pt")["model"]  # same seed and data, 2 epochs
    ours = load_checkpoint(run / "last.pt")["model"]
    assert not torch.equal(ours["branch0.conv1.weight"], vanilla["branch0.conv1.weight"])


def test_moddrop_zeroes_exactly_one_view_of_each_dropped_sample(synthetic_data):
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.config import resolve
    from mmtm.training.hardware import Distributed
    from mmtm.training.loop import build_trainer, train_step

    t = build_trainer(resolve("demo", width=4, policy="moddrop", moddrop_p=1.0), 3, torch.device("cpu"),
                      Distributed())
    seen = []
    t.model.register_forward_pre_hook(lambda module, args: seen.append(args))
    batch = next(iter(two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=0, backend="torch",
                                      device="cpu", num_threads=1)))
    train_step(t, batch, "regular")
    (x0, x1), = seen
    zero0, zero1 = (x.flatten(1).eq(0).all(1) for x in (x0, x1))
    assert (zero0 ^ zero1).all()                       # p = 1: every sample loses exactly one view
    assert batch.view0.ne(0).any() and batch.view1.ne(0).any()  # the loader's batch is left as it was


def test_tensorboard_scalars_read_back(trained_runs):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained_runs / "balanced"
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    steps, epochs = read_csv(run / "steps.csv"), read_csv(run / "epochs.csv")
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "d_speed/cumulative", "d_speed/step", "d_speed/window", "cls/s_m1_m0", "cls/s_m0_m1",
            "epoch/val_acc", "epoch/lr", "epoch/rebalance_m1_steps"} <= tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [int(s["step"]) for s in steps]
    assert [e.value for e in loss] == pytest.approx([float(s["loss"]) for s in steps], rel=1e-6)
    val = events.Scalars("epoch/val_acc")
    assert [e.value for e in val] == pytest.approx([float(e["val_acc"]) for e in epochs], rel=1e-6)


def test_training_works_without_tensorboard(synthetic_data, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    r = invoke("train", "--data", synthetic_data, "--out", tmp_path / "run", "--epochs", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert "tensorboard is not installed" in r.output and not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "last.pt").is_file()


def test_run_files_get_the_mode_of_any_file_the_user_writes(trained_runs):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "best.pt", "last.pt", "steps.csv", "epochs.csv"):
        assert os.stat(trained_runs / "vanilla" / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_precise_bn_recomputes_the_statistics_as_plain_averages_and_leaves_the_gates(synthetic_data):
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.config import resolve
    from mmtm.training.hardware import Compute, Distributed
    from mmtm.training.loop import build_trainer, recompute_bn_stats, train_step

    t = build_trainer(resolve("demo", width=4, batch_size=4), 3, torch.device("cpu"), Distributed())
    loader = two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=0, backend="torch",
                             device="cpu", num_threads=1)
    batches = list(loader)
    for b in batches[:3]:
        train_step(t, b, "regular")
    gates = [m.running_gate_a.clone() for m in t.net.mmtms]
    seen = []
    bn = t.net.branch0.bn1
    hook = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    recompute_bn_stats(t.net, batches, Compute(torch.device("cpu")), limit=2)
    hook.remove()
    assert len(seen) == 2 and int(bn.num_batches_tracked) == 2
    torch.testing.assert_close(bn.running_mean, (seen[0] + seen[1]) / 2)  # the plain average, not an EMA
    assert bn.momentum == 0.1 and t.net.training                          # settings restored
    assert all(torch.equal(g, m.running_gate_a) for g, m in zip(gates, t.net.mmtms))  # MMTM gates untouched


def test_a_single_view_run_trains_one_branch_and_writes_its_test_accuracy(synthetic_data, tmp_path):
    r = invoke("train", "--data", synthetic_data, "--out", tmp_path / "sv", "--epochs", 1, *TINY, "--single-view", 6)
    assert r.exit_code == 0, r.output
    assert "d_speed —" in r.output and "(m0 —, m1 " in r.output and "nan" not in r.output  # view 6's branch only
    assert all(k.startswith("branch.") for k in load_checkpoint(tmp_path / "sv" / "best.pt")["model"])
    for name in ("cur.json", "cur-last.json"):
        cur = json.loads((tmp_path / "sv" / name).read_text())
        assert cur["single_view"] == 1 and cur["n"] > 0 and 0 <= cur["acc"] <= 1
        assert cur["acc_m0"] == cur["acc_m1"] == cur["acc"] and cur["d_util"] != cur["d_util"]  # no CUR: nan


def test_reading_in_process_trains_exactly_like_a_worker(synthetic_data, tmp_path):
    """--loader-threads 0 (the torch loader reads in the training process) and --loader-threads 1 (one DataLoader
    worker) give the same batches, steps and weights: the order and the flips are drawn in the training process either
    way."""
    for threads in (0, 1):
        r = invoke("train", "--data", synthetic_data, "--out", tmp_path / f"t{threads}", "--epochs", 2, *TINY,
                   "--loader-threads", threads, "--max-steps-per-epoch", 4, "--balanced", "--alpha", 0)
        assert r.exit_code == 0, r.output
    assert read_csv(tmp_path / "t0" / "steps.csv") == read_csv(tmp_path / "t1" / "steps.csv")
    assert json.loads((tmp_path / "t1" / "config.json").read_text())["num_threads"] == 1
    w0, w1 = (load_checkpoint(tmp_path / f"t{t}" / "last.pt")["model"] for t in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
