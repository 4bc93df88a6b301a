"""TensorBoard (mmtm/training/tensorboard_log.py), read back with TensorBoard's own EventAccumulator: an interrupted and
resumed run keeps every event an uninterrupted one has; validation loss, hparams and eval-cur's d_util are there."""
import json
import shutil

import pytest

from helpers import TINY, invoke, read_csv, stop_after_epoch

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
FLAGS = ["--policy", "balanced", "--alpha", "0", *TINY, "--epochs", 4, "--max-steps-per-epoch", 3]


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_run_keeps_every_event_of_an_uninterrupted_one(synthetic_data, tmp_path, monkeypatch):
    """Stopped right after epoch 2's checkpoint (as Ctrl-C there would) and resumed: the events read back are those
    of a run never stopped, epoch 2's summary included (TensorBoard purges from the resumed writer's purge_step on)."""

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert invoke("train", "--data", synthetic_data, "--out", full, *FLAGS).exit_code == 0
    stop_after_epoch(monkeypatch, 2)
    assert invoke("train", "--data", synthetic_data, "--out", cut, *FLAGS).exit_code == 130
    monkeypatch.undo()
    r = invoke("train", "--data", synthetic_data, "--out", cut, *FLAGS, "--resume")
    assert r.exit_code == 0, r.output

    expected, got = scalars(full), scalars(cut)
    epochs = read_csv(full / "epochs.csv")
    assert [v for _, v in expected["epoch/val_acc"]] == pytest.approx([float(e["val_acc"]) for e in epochs])
    assert [v for _, v in expected["epoch/val_loss"]] == pytest.approx([float(e["val_loss"]) for e in epochs])
    assert len(expected["train/loss"]) == len(read_csv(full / "steps.csv"))
    assert got.keys() == expected.keys()
    for tag in expected:
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in expected[tag]], rel=1e-6, nan_ok=True), tag


def test_hparams_and_eval_curs_d_util_are_logged(trained_runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = shutil.copytree(trained_runs / "balanced", tmp_path / "run")
    for which in ("best", "last"):
        assert invoke("eval-cur", run, "--checkpoint", which, "--device", "cpu").exit_code == 0
    got = scalars(run)
    cur = json.loads((run / "cur.json").read_text())
    assert got["cur/d_util"][-1][1] == pytest.approx(cur["d_util"])
    assert got["cur_last/d_util"][-1][1] == pytest.approx(json.loads((run / "cur-last.json").read_text())["d_util"])
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["policy"].string_value == "balanced"
    assert start.hparams["alpha"].number_value == 0.0

