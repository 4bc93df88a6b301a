"""Sweeps: --jobs N gives the same results as one at a time, each job's threads, a killed sweep finishes only what was
unfinished, and Slurm through submitit against stand-in sbatch/sacct/srun (the real submitit code path)."""
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import invoke, read_csv, start_mmtm
from mmtm.analysis import sweep
from mmtm.analysis.compare import run_comparison

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
        # not a terminal: one line per run as it ends
        ended = [line for line in r.output.splitlines() if line.startswith("[")]
        assert sorted(re.sub(r"^\[\d/2\] | after \d+ s$", "", line) for line in ended) == \
            ["balanced-s0 done", "vanilla-s0 done"], r.output
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
    assert command[1:3] == ["-m", "mmtm.analysis.sweep"] and command[3].endswith("job.json")
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


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def one_error_line(r) -> str:
    """The error line of a command that failed with exit status 2: its last line and only error (what compare
    printed before, such as how many runs it keeps, may precede it)."""
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and lines[-1].startswith("error: "), r.output
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in r.output, r.output
    return lines[-1]


def test_a_kept_run_of_other_settings_or_data_is_refused_or_moved_aside_and_trained_again(
        synthetic_data, tmp_path, figures_not_drawn):
    import shutil

    data = shutil.copytree(synthetic_data, tmp_path / "d")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    out = tmp_path / "o"
    args = ["compare", "--data", data, "--out", out, "--policies", "vanilla", "--seeds", "0", "--config", cfg]
    r = invoke(*args, "--epochs", "1")
    assert r.exit_code == 0 and "0 of 1 runs kept" in r.output, r.output
    r = invoke(*args, "--epochs", "1", "--jobs", "2")  # threads are not what a run is
    assert r.exit_code == 0 and "1 of 1 runs kept" in r.output and "0 to train" in r.output, r.output
    before = tree(out)
    line = one_error_line(invoke(*args, "--epochs", "2"))
    assert f"{out / 'vanilla-s0'} holds a run of other settings" in line and "epochs 1 → 2" in line
    assert "--retrain-changed" in line and tree(out) == before
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "note": "prepared again"}))
    line = one_error_line(invoke(*args, "--epochs", "1"))
    assert "data digest sha256:" in line and tree(out) == before
    r = invoke(*args, "--epochs", "2", "--retrain-changed")
    assert r.exit_code == 0 and "moved 1 runs of other settings" in r.output, r.output
    (aside,) = out.glob(".replaced-*")
    assert json.loads((aside / "vanilla-s0" / "config.json").read_text())["epochs"] == 1  # kept, not deleted
    assert json.loads((out / "vanilla-s0" / "config.json").read_text())["epochs"] == 2
    assert len(read_csv(out / "vanilla-s0" / "epochs.csv")) == 2
    assert invoke("compare", "--collect", out, "--out", tmp_path / "c").exit_code == 0  # the moved run is not in it
    assert [r["run"] for r in json.loads((tmp_path / "c" / "comparison.json").read_text())["runs"]] == ["vanilla-s0"]


def test_a_job_refuses_to_resume_a_run_folder_of_other_settings(synthetic_data, trained_runs, tmp_path, capsys):
    import shutil

    from mmtm.loaders.dataset import data_digest

    run = shutil.copytree(trained_runs / "vanilla", tmp_path / "vanilla-s0")
    config = {**json.loads((run / "config.json").read_text()), "lr": 0.5, "out": str(run)}
    job = sweep.write_job(sweep.RunSpec(run, config, data_digest=data_digest(synthetic_data)), launcher="local",
                          threads=1, device=None)
    before = tree(run)
    assert sweep.main([str(job)]) == 2
    assert f"{run}: holds a run of other settings (lr 0.05 → 0.5)" in capsys.readouterr().err
    assert tree(run) == before


def test_a_failed_job_is_named_with_its_error_and_its_log(synthetic_data, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**SHORT, "batch_size": 1000}))  # more than the split holds: the job's own check
    out = tmp_path / "o"
    line = one_error_line(invoke("compare", "--data", synthetic_data, "--out", out, "--policies", "vanilla",
                                 "--seeds", "0", "--config", cfg, "--epochs", "1"))
    assert f"see {out / 'vanilla-s0' / 'job.log'}" in line and "(vanilla-s0): error: " in line and "batch" in line


def standin_path(tmp_path, monkeypatch, *, only=None) -> Path:
    """PATH with the stand-in Slurm commands (or only those named) and nothing else but python's folder."""
    standin = Path(__file__).with_name("slurm_standin.py")
    subprocess.run([sys.executable, str(standin), "install", str(tmp_path / "bin"), str(tmp_path / "state.json")],
                   check=True)
    for command in (tmp_path / "bin").iterdir():
        if only is not None and command.name not in only:
            command.unlink()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}")
    return tmp_path / "state.json"


@pytest.mark.parametrize("case", ["no srun", "no sbatch", "no submitit", "sbatch refuses"])
def test_every_slurm_failure_is_one_error_line(case, synthetic_data, tmp_path, monkeypatch, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    standin_path(tmp_path, monkeypatch, only={"no srun": {"sbatch", "sacct"}, "no sbatch": {"srun", "sacct"}}.get(case))
    if case == "no submitit":
        monkeypatch.setitem(sys.modules, "submitit", None)  # an import of it fails as if it were not installed
    if case == "sbatch refuses":
        monkeypatch.setenv("SLURM_STANDIN_REFUSE", "sbatch: error: Batch job submission failed: Invalid partition")
    out = tmp_path / "o"
    line = one_error_line(invoke("compare", "--data", synthetic_data, "--out", out, "--policies", "vanilla",
                                 "--seeds", "0", "--config", cfg, "--epochs", "1", "--launcher", "slurm"))
    assert {"no srun": "no srun on PATH", "no sbatch": "no sbatch on PATH", "no submitit": "submitit package",
            "sbatch refuses": "sbatch refused the job array of 1 runs: sbatch: error: Batch job submission failed"
            }[case] in line
    if case != "sbatch refuses":  # checked before anything is made; a refusal is known only once sbatch answers
        assert not out.exists()


TIMING = {"seconds", "minutes", "minutes per run", "sweep", "cost"}  # what says how long, not what was computed


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def outcome(out: Path) -> dict:
    """Every run's files and comparison.json, byte for byte but for timings (and the checkpoints' bytes, which hold
    no timing but are compared through cur.json and the steps)."""
    found = {"comparison.json": untimed(json.loads((out / "comparison.json").read_text()))}
    for run in sorted(p.parent for p in out.glob("*/config.json")):
        for name in ("config.json", "data.json", "steps.csv", "cur.json", "cur-last.json"):
            found[f"{run.name}/{name}"] = (run / name).read_text()
        found[f"{run.name}/epochs.csv"] = [untimed(e) for e in read_csv(run / "epochs.csv")]
        found[f"{run.name}/summary.json"] = untimed(json.loads((run / "summary.json").read_text()))
    return found


@pytest.fixture(scope="module")
def uninterrupted(synthetic_data, tmp_path_factory):
    """compare --jobs 2 of two runs of 4 epochs of 3 steps into a folder: its arguments and its `outcome`."""
    from mmtm.analysis import plots

    tmp = tmp_path_factory.mktemp("fault")
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    out = tmp / "o"
    args = compare_args(synthetic_data, out, cfg, "--jobs", "2")
    args[args.index("--epochs") + 1] = "4"
    with pytest.MonkeyPatch.context() as mp:  # figures_not_drawn, for this module-wide sweep
        mp.setattr(plots, "_save", lambda fig, path: (plots.plt.close(fig), Path(path).touch(), path)[-1])
        r = invoke(*args)
    assert r.exit_code == 0, r.output
    found = outcome(out)
    shutil.rmtree(out)
    return args, out, found


@pytest.fixture
def fault_sweep(uninterrupted, figures_not_drawn):
    """The same sweep to be disturbed, into the same (now empty) folder, and what it must end with."""
    args, out, found = uninterrupted
    yield args, out, found
    shutil.rmtree(out, ignore_errors=True)


def holders(path: Path) -> list[int]:
    """The processes that have `path` open (a job has its job.log open as its stdout until it ends)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                found.append(int(fd_dir.parent.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def wait_for_both_runs_in_their_second_epoch(out: Path) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if all((out / r / "last.pt").exists() for r in ("vanilla-s0", "balanced-s0")):
            return
        time.sleep(0.05)
    raise AssertionError("the runs did not reach their first checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_sweep_killed_mid_run_leaves_no_job_training_and_its_rerun_ends_as_if_uninterrupted(sig, fault_sweep,
                                                                                            tmp_path):
    args, out, uninterrupted = fault_sweep
    proc = start_mmtm(*args, log=tmp_path / "log")
    wait_for_both_runs_in_their_second_epoch(out)
    os.kill(proc.pid, sig)  # the sweep alone, not its process group: its jobs must end with it
    proc.join()
    assert proc.exitcode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), (tmp_path / "log").read_text()
    for run in ("vanilla-s0", "balanced-s0"):
        deadline = time.time() + 120
        while holders(out / run / "job.log") and time.time() < deadline:  # the job, until it has ended
            time.sleep(0.05)
        assert not holders(out / run / "job.log")
        assert not (out / run / "summary.json").exists(), f"{run}'s job went on after its sweep was killed"
    r = invoke(*args)  # at once, as the README advises
    assert r.exit_code == 0, r.output
    assert "2 resumed" in r.output
    assert outcome(out) == uninterrupted


@pytest.mark.slow
def test_a_second_sweep_on_one_out_is_refused_and_the_first_ends_as_if_alone(fault_sweep, tmp_path):
    """The second sweep starts while the first one's jobs are in their second epoch, held there (SIGSTOP) until the
    second has ended, so the two overlap whatever the machine's speed."""
    args, out, uninterrupted = fault_sweep
    first = start_mmtm(*args, log=tmp_path / "log1")
    wait_for_both_runs_in_their_second_epoch(out)
    jobs = [pid for run in ("vanilla-s0", "balanced-s0") for pid in holders(out / run / "job.log")]
    assert jobs
    for pid in jobs:
        os.kill(pid, signal.SIGSTOP)
    try:
        second = start_mmtm(*args, log=tmp_path / "log2")
        second.join(300)
    finally:
        for pid in jobs:
            os.kill(pid, signal.SIGCONT)
    first.join(300)
    said = [line for line in (tmp_path / "log2").read_text().splitlines() if line.strip()]
    assert second.exitcode == 2 and len(said) == 1 and said[0].startswith("error: "), said
    assert f"{out}: pid {first.pid} on " in said[0] and "is running a sweep in it" in said[0]
    assert first.exitcode == 0, (tmp_path / "log1").read_text()
    assert outcome(out) == uninterrupted


def test_each_readme_compare_command_that_trains_has_its_own_out():
    """Two commands of other settings into one --out would refuse (or, before, mix their runs); the README's
    commands, run in order as benchmarks/readme_compare.py replays them, must each get a folder of their own."""
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    text = "\n".join((root / name).read_text() for name in ("README.md", "docs/guide.md", "docs/results.md"))
    outs = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["mmtm", "compare"] and "--collect" not in words:
                outs.append(words[words.index("--out") + 1])
    assert len(outs) >= 5 and len(set(outs)) == len(outs), outs


def test_collect_into_its_own_folder_twice_counts_each_run_once(tmp_path, figures_not_drawn):
    import shutil

    committed = Path(__file__).resolve().parents[1] / "docs" / "options"
    x = shutil.copytree(committed / "runs", tmp_path / "x")
    for _ in range(2):
        r = invoke("compare", "--collect", x, "--out", x)
        assert r.exit_code == 0, r.output
        assert (x / "comparison.json").read_bytes() == (committed / "comparison.json").read_bytes()


def test_probe_adds_each_branchs_probe_and_evaluates_kept_runs_again_without_retraining(
        synthetic_data, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    out = tmp_path / "o"
    args = ["compare", "--data", synthetic_data, "--out", out, "--policies", "vanilla", "--seeds", "0", "--config",
            cfg, "--epochs", "1"]
    assert invoke(*args).exit_code == 0
    run = out / "vanilla-s0"
    assert "probe_m0" not in json.loads((run / "cur.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    summary["job"]["seconds"] = 6000.0  # as if training had taken 100 minutes: the re-evaluation must not count it
    (run / "summary.json").write_text(json.dumps(summary))
    weights, trained = (run / "last.pt").stat().st_mtime_ns, summary["job"]
    r = invoke(*args, "--probe")
    assert r.exit_code == 0, r.output
    for name in ("cur.json", "cur-last.json"):
        cur = json.loads((run / name).read_text())
        assert 0 <= cur["probe_m0"] <= 1 and 0 <= cur["probe_m1"] <= 1, name
    assert (run / "last.pt").stat().st_mtime_ns == weights  # evaluated again, not retrained
    job = json.loads((run / "summary.json").read_text())["job"]
    assert job["seconds"] == trained["seconds"] and job["probe_seconds"] > 0  # the training time is kept
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["sum_of_job_minutes"] == round(job["probe_seconds"] / 60, 2) < 1  # this launch trained nothing
    table = json.loads((out / "comparison.json").read_text())
    assert "probe_m0" in table["runs"][0] and "probe_m0" in (out / "comparison.md").read_text()
    r = invoke(*args, "--probe")
    assert "1 of 1 runs kept" in r.output, r.output


def test_umt_in_a_sweep_is_taught_by_its_seeds_baselines_trained_first(synthetic_data, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(SHORT))
    out = tmp_path / "o"
    args = ["compare", "--data", synthetic_data, "--out", out, "--policies", "umt", "--seeds", "0", "--config", cfg,
            "--epochs", "1", "--jobs", "2"]
    line = one_error_line(invoke(*args))
    assert "policy umt needs --baselines" in line and not out.exists()
    r = invoke(*args, "--baselines")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "umt-s0" / "config.json").read_text())
    assert config["umt_teachers"] == f"{out / 'single-view0-s0'},{out / 'single-view1-s0'}"
    ended = [re.sub(r"^\[\d/3\] | done after \d+ s$", "", line) for line in r.output.splitlines()
             if line.startswith("[")]
    assert ended[-1] == "umt-s0", r.output  # with two jobs at once it still waited for both teachers
