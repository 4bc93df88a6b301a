"""benchmarks/gpu_check.py on a machine without a GPU: its help, its dry run (every part up to the first CUDA call:
imports, a PIL-made dataset, the plan) and how it judges what the GPU parts measured."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.factory import two_view_loader

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def check():
    """The script as a module."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


def gpu_check(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_and_a_dry_run_work_without_a_gpu(tmp_path):
    p = gpu_check("--help", cwd=tmp_path)
    assert p.returncode == 0 and "--dry-run" in p.stdout and "verdicts" in p.stdout
    data, out = tmp_path / "data", tmp_path / "out"
    p = gpu_check("--dry-run", "--data", data, "--out", out, "--per-class", 6, "--image-size", 32, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    record = json.loads((out / "gpu-check.json").read_text())
    assert set(record["plan"]) == {"info", "pytest", "graphs", "loader", "train", "pack"}
    assert record["data_made"]["image_size"] == 32 and "verdicts" not in record and "machine" not in record
    ds = open_dataset(data)
    assert ds.image_size == 32 and len(ds.classes) == 10 and len(ds.rows("val")) == 10
    batch = next(iter(two_view_loader(data, "train", batch_size=4, train=True, seed=0, backend="torch",
                                      device="cpu", num_threads=0)))
    assert batch.view0.shape == (4, 3, 32, 32)


def test_verdicts_judge_every_target_and_leave_skipped_parts_unjudged(check, tmp_path):
    entry = dict(cuda_graphs=True, capture_failed=None, host_syncs_per_step=1.0)
    train = {"results": [{**entry, "batch_size": 8, "end_to_end_samples_per_s": 1700.0,
                          "end_to_end_over_compute": 0.97},
                         {**entry, "batch_size": 64, "end_to_end_samples_per_s": 4000.0,
                          "end_to_end_over_compute": 0.96},
                         {**entry, "cuda_graphs": False, "batch_size": 8, "end_to_end_samples_per_s": 1.0,
                          "end_to_end_over_compute": 0.1}]}
    (tmp_path / "gpu-train.json").write_text(json.dumps(train))
    record = {"bench_train": {}, "pytest": {"exit": 0},
              "graph_vs_eager_cli": {"ok": True, "max_rel_diff_loss_d_speed": 2e-6, "capture_notes": 0,
                                     "graph_steps": {"regular": 40, "rebalance_m0": 0, "rebalance_m1": 30},
                                     "pipeline_builds": {"off": {"train #1": 1, "val #2": 1},
                                                         "auto": {"train #3": 2, "val #4": 1}}}}
    v = check.verdicts(record, tmp_path, skipped=[])
    assert {k: x["pass"] for k, x in v.items()} == {
        "b8_end_to_end_samples_per_s": True, "b64_end_to_end_samples_per_s": False, "end_to_end_over_compute": True,
        "host_syncs_per_step": True, "graph_vs_eager_max_rel_diff": True, "capture_fallbacks": False,
        "pipeline_builds_per_loader": False, "gpu_tests_exit_status": True}
    assert (v["end_to_end_over_compute"]["measured"], v["capture_fallbacks"]["measured"],
            v["pipeline_builds_per_loader"]["measured"]) == (0.96, 1, 2)  # rebalance_m0 never replayed
    skipped = check.verdicts({"pytest": {"exit": 1}}, tmp_path, skipped=["train", "graphs", "pack"])
    assert skipped["not_judged"] == [k for k in check.targets() if k != "gpu_tests_exit_status"]
    assert skipped["gpu_tests_exit_status"]["pass"] is False


@pytest.mark.parametrize("args,message", [(["--per-class", "2"], "--per-class at least 6")])
def test_bad_settings_are_one_error_line(tmp_path, args, message):
    p = gpu_check("--dry-run", "--data", tmp_path / "d", "--out", tmp_path / "o", *args, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and message in p.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()


def test_only_a_json_object_on_stdout_is_read(check):
    assert check.last_json(json.dumps({"torch_gpus": ["H100"]}, indent=2)) == {"torch_gpus": ["H100"]}
    assert check.last_json('epoch 0 ...\n{"pipeline_builds": {"train": 1}}\n') == {"pipeline_builds": {"train": 1}}
    assert check.last_json("nothing\n[1, 2]\n") is None
