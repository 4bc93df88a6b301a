"""`mmtm bench` prints one JSON object with the loader and training figures side by side."""
import json

from typer.testing import CliRunner

from cli.app import app


def test_bench_json_has_loader_and_train_results(make_dataset, tmp_path):
    data = make_dataset(tmp_path, size=16)
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--data", str(data), "--batch-size", "4", "--threads", "1",
                                 "--steps", "2", "--device", "cpu", "--json", "--save", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert json.loads(r.output) == result
    assert {"torch", "memory"} <= set(result["loader"]["results"])
    for v in result["loader"]["results"].values():
        assert v["images_per_s"] > 0 and v["cpu_ms_per_image"] > 0
    train = result["train"]["results"]
    assert train["end_to_end_samples_per_s"] > 0 and train["compute_only_samples_per_s"] > 0
    assert 0 <= train["data_wait_share"] < 1
    assert train["end_to_end_over_compute"] == train["end_to_end_samples_per_s"] / train["compute_only_samples_per_s"]


def test_bench_without_data_is_one_error_line():
    r = CliRunner().invoke(app, ["bench"])
    assert r.exit_code == 2 and r.output.strip() == "error: --data is required (a folder made by `mmtm prep`)"
