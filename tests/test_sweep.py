"""Sweeps: --jobs N gives the same results as one at a time, each job's threads, a killed sweep finishes only what was
unfinished, and Slurm through submitit against stand-in sbatch/sacct/srun (the real submitit code path)."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import invoke, read_csv, start_mmtm
from mmtm import sweep
from mmtm.compare import run_comparison

TINY = {"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 0, "device": "cpu", "precise_bn": 2}
SHORT = {**TINY, "max_steps_per_epoch": 3}  # epochs of 3 steps, where no kill has to land inside a run


@pytest.fixture
def data(synthetic_data):
    return synthetic_data


def compare_args(data, out, cfg, *extra, seeds="0", policies="vanilla,balanced"):
    return ["compare", "--data", str(data), "--out", str(out), "--policies", policies, "--seeds", seeds,
            "--config", str(cfg), "--epochs", "2", *extra]


def results(run: Path) -> dict:
    """What a run computed, without what only says when or where (seconds, paths, hosts)."""
    epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in read_csv(run / "epochs.csv")]
    curs = {name: {k: v for k, v in json.loads((run / name).read_text()).items() if k not in ("checkpoint",)}
            for name in ("cur.json", "cur-last.json")}
    return {"steps": (run / "steps.csv").read_text(), "epochs": epochs, **curs}


@pytest.mark.slow
def test_two_jobs_give_the_results_of_one_job_at_a_time(data, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    for jobs in (1, 2):
        r = invoke(*compare_args(data, tmp_path / f"jobs{jobs}", cfg, "--jobs", str(jobs)))
        assert r.exit_code == 0, r.output
    for run in ("vanilla-s0", "balanced-s0"):
        assert results(tmp_path / "jobs1" / run) == results(tmp_path / "jobs2" / run), run
    one, two = (json.loads((tmp_path / f"jobs{j}" / "sweep.json").read_text()) for j in (1, 2))
    assert (one["concurrent"], two["concurrent"]) == (1, 2)


def test_each_job_gets_its_share_of_the_cores():
    assert sweep.thread_share(2, cores=2) == 1 and sweep.thread_share(1, cores=2) == 2
    assert sweep.thread_share(4, cores=16) == 4 and sweep.thread_share(8, cores=2) == 1
    # a run that asks for fewer threads keeps its number; one without a setting gets the share
    assert sweep.job_config({"cpu_threads": 1, "num_threads": 4}, 2) == {"cpu_threads": 1, "num_threads": 2}
    assert sweep.job_config({"cpu_threads": None, "num_threads": 1}, 3) == {"cpu_threads": 3, "num_threads": 1}


def test_the_job_processes_run_with_their_thread_share(data, tmp_path, monkeypatch, figures_not_drawn):
    """What launch_local hands each job: OMP/MKL threads and the capped config, and the threads torch then ran with
    (summary.json's job record)."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**SHORT, "cpu_threads": None, "num_threads": 2}))
    monkeypatch.setattr(sweep, "usable_cores", lambda: 4)
    seen = []
    real_start = sweep.start_job

    def start_job(target, argv, *, env, log):
        seen.append((env["OMP_NUM_THREADS"], json.loads(Path(argv[0]).read_text())["config"]))
        return real_start(target, argv, env=env, log=log)

    monkeypatch.setattr(sweep, "start_job", start_job)
    r = invoke("compare", "--data", str(data), "--out", str(tmp_path / "o"), "--policies", "vanilla", "--seeds", "0",
               "--config", str(cfg), "--epochs", "1", "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert [(omp, c["cpu_threads"], c["num_threads"]) for omp, c in seen] == [("2", 2, 2)]
    job = json.loads((tmp_path / "o" / "vanilla-s0" / "summary.json").read_text())["job"]
    assert (job["threads"], job["launcher"]) == (2, "local")


@pytest.mark.slow
def test_a_killed_sweep_rerun_finishes_only_what_was_unfinished(data, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "o"
    args = compare_args(data, out, cfg, "--jobs", "1", seeds="0,1", policies="vanilla")
    proc = start_mmtm(*args)
    deadline = time.time() + 300
    while not (out / "vanilla-s0" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its job server and its running job
    proc.join()
    done_before = {p.parent.name: p.stat().st_mtime for p in out.glob("*/summary.json")}
    assert "vanilla-s0" in done_before and not (out / "comparison.md").exists()
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    after = {p.parent.name: p.stat().st_mtime for p in out.glob("*/summary.json")}
    assert set(after) == {"vanilla-s0", "vanilla-s1"}
    assert all(after[name] == mtime for name, mtime in done_before.items())  # finished runs were not run again
    assert (out / "comparison.md").exists()


def wait_for(state: Path, job_count: int, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = json.loads(state.read_text()) if state.exists() else {"tasks": {}, "submissions": []}
        if len(s["submissions"]) >= job_count and s["tasks"] and all(
                v in ("COMPLETED", "FAILED") for v in s["tasks"].values()):
            return s
        time.sleep(0.5)
    raise AssertionError(f"stand-in jobs did not finish: {s}")


@pytest.mark.slow
def test_slurm_through_submitit_no_wait_then_collect_and_resubmit(data, tmp_path, monkeypatch, figures_not_drawn):
    standin = Path(__file__).with_name("slurm_standin.py")
    state = tmp_path / "slurm-state.json"
    subprocess.run([sys.executable, str(standin), "install", str(tmp_path / "bin"), str(state)], check=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    out = tmp_path / "o"
    slurm = ["--launcher", "slurm", "--partition", "debug", "--time-min", "10", "--cpus-per-run", "1",
             "--array-parallelism", "2"]
    monkeypatch.setenv("SLURM_STANDIN_FAIL", "1")  # the second task of the first array fails
    r = invoke(*compare_args(data, out, cfg, *slurm, "--no-wait"))
    assert r.exit_code == 0, r.output
    assert "submitted 2 runs" in r.output and not (out / "comparison.md").exists()
    s = wait_for(state, 1)
    (first,) = s["submissions"]
    assert first["flags"]["partition"] == "debug" and first["flags"]["cpus-per-task"] == "1"
    assert first["flags"]["array"] == "0-1%2" and first["flags"]["time"] == "10"
    assert "submitit.core._submit" in first["script"] and "srun" in first["script"]
    job = pickle.loads(next((out / ".submitit").glob(f"{first['job']}_0_submitted.pkl")).read_bytes())
    command = job.function.command
    assert command[1:3] == ["-m", "mmtm.sweep"] and command[3].endswith("job.json")
    spec = json.loads(Path(command[3]).read_text())
    assert spec["launcher"] == "slurm" and spec["config"]["policy"] in ("vanilla", "balanced")
    assert list(s["tasks"].values()).count("FAILED") == 1
    assert len(json.loads((out / "slurm.json").read_text())) == 2  # every run's job id

    monkeypatch.delenv("SLURM_STANDIN_FAIL")
    # the same command again, waiting: what finished is collected, the failed run resubmitted alone
    path = run_comparison(str(data), out, seeds=[0], policies=("vanilla", "balanced"), config_file=str(cfg),
                          epochs=2, launcher="slurm", wait=True,
                          slurm={"partition": "debug", "time_min": 10, "gpus_per_run": 0, "cpus_per_run": 1,
                                 "array_parallelism": 2, "poll_s": 0.5})
    s = json.loads(state.read_text())
    assert len(s["submissions"]) == 2 and "array" not in s["submissions"][1]["flags"]  # the failed run alone
    assert path == out / "comparison.md" and path.exists()
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert {r["launcher"] for r in runs} == {"slurm"} and len(runs) == 2
