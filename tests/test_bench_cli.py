"""`mmtm bench` prints one JSON object with the loader and training figures side by side."""
import json

from typer.testing import CliRunner

from mmtm.cli.app import app


def test_bench_json_has_loader_and_train_results(make_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("mmtm.bench.loader._MIN_SECONDS", 0.05)  # what is measured, not for how long
    data = make_dataset(tmp_path, size=16)
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--data", str(data), "--batch-size", "4", "--loader-threads", "1",
                                 "--steps", "2", "--device", "cpu", "--json", "--save", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert json.loads(r.output) == result
    assert {"torch", "memory"} <= set(result["loader"]["results"])
    for v in result["loader"]["results"].values():
        assert v["images_per_s"] > 0 and v["cpu_ms_per_image"] > 0
    (train,) = result["train"]["results"]  # one batch size, eager only on the CPU
    assert (train["batch_size"], train["cuda_graphs"], train["gpu_busy_ms_per_step"]) == (4, False, None)
    assert train["end_to_end_samples_per_s"] > 0 and train["compute_only_samples_per_s"] > 0
    assert 0 <= train["data_wait_share"] < 1 and train["compute_steps_per_s"] > 0
    assert train["end_to_end_over_compute"] == train["end_to_end_samples_per_s"] / train["compute_only_samples_per_s"]
    # every step eager, and counted: 3 warm-up steps and 3 repeats of 2 steps, end to end and compute only
    assert (train["graph_replays"], train["eager_steps"], train["capture_failed"]) == ({}, {"regular": 18}, None)


def test_bench_train_times_the_steps_as_the_training_loop_takes_them(monkeypatch):
    """Launch a step, fetch the next batch while it runs, then read the step (mmtm.training.loop.train_one_epoch)."""
    from types import SimpleNamespace

    import torch

    from mmtm.bench import train as bench

    events = []
    monkeypatch.setattr(bench, "launch_step", lambda t, batch, mode: events.append(f"launch {batch.k}") or batch.k)
    monkeypatch.setattr(bench, "read_step", lambda t, readout, mode: events.append(f"read {readout}"))

    def batches():
        for k in range(4):
            events.append(f"fetch {k}")
            yield SimpleNamespace(k=k, label=torch.zeros(2))

    trainer = SimpleNamespace(compute=SimpleNamespace(device=torch.device("cpu")), graphs=None)
    steps = bench._Steps(trainer, batches())
    assert steps.run(3)[2] == 6
    assert events == ["fetch 0", "launch 0", "fetch 1", "read 0", "launch 1", "fetch 2", "read 1", "launch 2",
                      "fetch 3", "read 2"]


def test_bench_train_takes_several_batch_sizes_and_the_scripts_flags(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=16, per_split={"train": 6})
    r = CliRunner().invoke(app, ["bench", "train", "--data", str(data), "--batch-size", "2,4", "--loader-threads", "1",
                                 "--steps", "2", "--device", "cpu", "--loader", "torch", "--channels-last", "on",
                                 "--json", "--save", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    results = json.loads(r.output)["results"]
    assert [(x["batch_size"], x["loader"], x["channels_last"]) for x in results] == [(2, "torch", True),
                                                                                   (4, "torch", True)]


def test_bench_render_runs_without_data(tmp_path):
    r = CliRunner().invoke(app, ["bench", "render", "--workers", "1", "--meshes", "5", "--repeats", "1",
                                 "--skip-synthetic", "--json", "--save", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["render"]["views_per_s"] > 0 and result["prep"]["meshes"] == 5
    assert result["projection"]["seconds"] == round(12_311 * 12 / result["prep"]["views_per_s"], 1)
    assert "synthetic" not in result


def test_bench_without_data_is_one_error_line():
    r = CliRunner().invoke(app, ["bench"])
    assert r.exit_code == 2 and r.output.strip() == "error: --data is required (a folder made by `mmtm prep`)"



def test_bench_pack_sums_concurrent_runs_and_every_bench_json_names_the_machine(make_dataset, tmp_path):
    import pytest

    data = make_dataset(tmp_path, size=16, per_split={"train": 6})
    r = CliRunner().invoke(app, ["bench", "pack", "--data", str(data), "--k", "1,2", "--preset", "demo",
                                 "--batch-size", "4", "--device", "cpu", "--steps", "2", "--json",
                                 "--save", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    one, two = result["results"]
    assert (one["k"], two["k"]) == (1, 2) and len(two["per_run_samples_per_s"]) == 2
    assert two["aggregate_samples_per_s"] == pytest.approx(sum(two["per_run_samples_per_s"]))
    assert one["aggregate_over_first"] == 1.0 and result["config"]["mps"] in (True, False)
    assert [(s["graph_replays"], s["capture_failed"]) for s in two["per_run_steps"]] == [({}, None)] * 2
    assert result["machine"]["torch_gpus"] == "none" or result["machine"]["cuda_available"]


def test_a_packed_run_that_fails_is_one_error_line_and_no_json(make_dataset, tmp_path):
    """The K runs are job processes: a user error in one comes back as bench pack's one error line."""
    data = make_dataset(tmp_path, size=16)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "format": "something-else"}))
    r = CliRunner().invoke(app, ["bench", "pack", "--data", str(data), "--k", "1", "--preset", "demo", "--device",
                                 "cpu", "--steps", "2", "--save", str(tmp_path / "p.json")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: a packed run failed with K = 1: ") and "dataset.json" in lines[0]
    assert lines[0].count("error:") == 1 and not (tmp_path / "p.json").exists()
