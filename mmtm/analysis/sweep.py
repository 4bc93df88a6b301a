"""Running a comparison's runs: on this machine N at a time, or on a Slurm cluster through submitit.

Every run is one job, `python -m mmtm.analysis.sweep RUN/job.json` (`main`): train (or resume from last.pt) exactly as
`mmtm train` does, eval-cur on best.pt and last.pt, then the run's summary.json (mmtm/analysis/evidence.py), which marks
it done. So a sweep that was killed, or whose cluster jobs failed, is finished by running the same command again: runs
with their evidence are kept, the others start or resume. A run folder is kept or resumed only if it holds the run
asked for (`changes`: its config.json and data digest against the sweep's), and the job holds the run's lock
(RUN/.run.lock) from its first check to its summary, so no second process writes the folder meanwhile.

Local (`--jobs N`, the default launcher): N job processes at once, forked from a server that imported torch once
(mmtm/analysis/jobs.py), each with its share of the cores — torch's threads and the loader's threads are both capped at
cores // N, so the jobs never oversubscribe the machine (two trainings that each use every core run many times
slower than one). With GPUs (`--gpus 0,1 --runs-per-gpu K`) each job gets one GPU (CUDA_VISIBLE_DEVICES), K
jobs per GPU at once, and the cores are shared among all jobs. On the CPU torch's results depend on its thread
count, so a run is repeatable bit for bit with the same `cpu_threads` (the demo preset fixes it at 1, so --jobs
changes no result).

Slurm (`--launcher slurm`): the runs not yet done are submitted as one job array through submitit, with the
partition, time limit, GPUs and CPUs per run asked for; the job ids are kept in OUT/slurm.json. `compare` waits for
them and builds the tables, or with --no-wait returns at once; the same command later collects what finished and
resubmits what failed (runs resume from last.pt), leaving queued and running jobs alone.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from mmtm.loaders.atomic import atomic_write_text
from mmtm.loaders.dataset import data_digest
from mmtm.loaders.errors import UserError
from mmtm.analysis.jobs import start as start_job

JOB_JSON = "job.json"
JOB_LOG = "job.log"
SLURM_RECORD = "slurm.json"
SLURM_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
MPS_PIPE = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
# Settings that say where a run computes and with how many threads, not what it trains or measures: a kept run is
# reused whatever they were (a sweep sets the threads itself, from its share of the cores).
NOT_COMPARED = ("out", "device", "num_threads", "cpu_threads")


@dataclass
class RunSpec:
    """One run of a sweep: where it goes and the resolved config it trains with."""
    dir: Path
    config: dict
    cell: dict = field(default_factory=dict)
    preset: str = ""
    data_digest: str | None = None  # of the data folder when the sweep was planned (mmtm.loaders.dataset.data_digest)
    probe: bool = False  # eval-cur with the linear probes (mmtm/analysis/probe.py) as well
    after: list[Path] = field(default_factory=list)  # runs that must be done before this one starts (UMT's teachers)

    @property
    def name(self) -> str:
        return str(Path(*self.dir.parts[-2:])) if self.cell else self.dir.name


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_share(concurrent: int, cores: int | None = None) -> int:
    """Threads each of `concurrent` jobs may use so that together they use the cores once."""
    return max(1, (cores or usable_cores()) // max(1, concurrent))


def job_config(config: dict, threads: int) -> dict:
    """The run's config with torch's and the loader's threads capped at the job's share (a run that asks for
    fewer keeps its number; one without a setting gets the share)."""
    cpu = config.get("cpu_threads")
    return {**config, "cpu_threads": threads if cpu is None else min(cpu, threads),
            "num_threads": min(config["num_threads"], threads)}


def is_done(spec: RunSpec) -> bool:
    from mmtm.analysis.evidence import is_summarised

    return is_summarised(spec.dir) and not (spec.probe and needs_probe(spec.dir))


def is_ready(spec: RunSpec) -> bool:
    """Whether every run `spec` waits for is done."""
    from mmtm.analysis.evidence import is_summarised

    return all(is_summarised(d) for d in spec.after)


def needs_probe(run_dir: Path) -> bool:
    """Whether a cur file of the run lacks the linear probes (`eval-cur --probe`)."""
    from mmtm.training.run import RunFolder

    run = RunFolder(run_dir)
    return any("probe_m0" not in json.loads(path.read_text()) for path in (run.cur, run.cur_last) if path.is_file())


def _short(digest: str | None) -> str:
    return "(none recorded)" if digest is None else digest[:len("sha256:") + 12] + "…"


def changes(run_dir: Path, config: dict, digest: str | None) -> list[str] | None:
    """How the run in `run_dir` differs from the run of `config` on data of `digest`, as `key old → new` (every
    setting but NOT_COMPARED, and the data digest RUN/data.json recorded); [] when it is that run, None when the
    folder holds no run (no config.json)."""
    from mmtm.training.config import to_dict
    from mmtm.training.run import RunFolder

    run = RunFolder(run_dir)
    saved = run.saved_config()
    if saved is None:
        return None
    old = to_dict(saved)
    found = [f"{k} {old[k]!r} → {v!r}" for k, v in config.items() if k not in NOT_COMPARED and old.get(k) != v]
    recorded = run.data_digest()
    if recorded != digest:
        found.append(f"data digest {_short(recorded)} → {_short(digest)}")
    return found


def write_job(spec: RunSpec, *, launcher: str, threads: int | None, device: str | None) -> Path:
    """RUN/job.json: what the job process needs (and nothing it could get wrong from the environment)."""
    spec.dir.mkdir(parents=True, exist_ok=True)
    path = spec.dir / JOB_JSON
    config = job_config(spec.config, threads) if threads else spec.config
    atomic_write_text(path, json.dumps({"config": config, "cell": spec.cell, "preset": spec.preset,
                                        "data_digest": spec.data_digest, "launcher": launcher, "threads": threads,
                                        "device": device, "probe": spec.probe}, indent=2) + "\n")
    return path


def run_job(job_json: str | os.PathLike) -> None:
    """The job: train or resume, eval-cur on best.pt and last.pt (with the probes if the sweep asks), summary.json
    (which marks the run done). A finished run that only lacks the probes keeps its training time in summary.json."""
    import torch

    from mmtm.loaders.device import resolve_device
    from mmtm.training.config import from_dict
    from mmtm.analysis.eval_cur import evaluate_cur
    from mmtm.analysis.evidence import SUMMARY_JSON, is_summarised, summarise
    from mmtm.training.run import RunFolder, read_json
    from mmtm.training.loop import fit

    job = json.loads(Path(job_json).read_text())
    cfg = from_dict(job["config"])
    started = time.perf_counter()
    run = RunFolder(cfg.out)
    run.take(wait=True)  # a job of a sweep killed a moment ago may still be ending
    try:
        digest = data_digest(cfg.data)
        if job.get("data_digest") not in (None, digest):
            raise UserError(f"{cfg.data}: its dataset.json or split files changed since the sweep was planned "
                            f"(digest {_short(job['data_digest'])} → {_short(digest)}); run the sweep again")
        found = changes(run.root, job["config"], digest)
        if found:
            raise UserError(f"{run.root}: holds a run of other settings ({'; '.join(found)}); it is not resumed")
        probe = job.get("probe", False)
        trained = read_json(run.root / SUMMARY_JSON)["job"] if is_summarised(run.root) else None
        fit(cfg, resume=run.last.is_file())
        for which in ("best", "last"):
            result, ckpt = run.cur_for(which), run.checkpoint(which)
            if not (result.is_file() and result.stat().st_mtime >= ckpt.stat().st_mtime
                    and not (probe and "probe_m0" not in read_json(result))):
                evaluate_cur(run.root, checkpoint=which, probe=probe)
        device = str(resolve_device(cfg.device))
        if device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            device += f" ({torch.cuda.get_device_name(0)}, CUDA_VISIBLE_DEVICES={visible})"
        seconds = round(time.perf_counter() - started, 1)
        summarise(run.root, cell=job["cell"], preset=job["preset"],
                  job=({**trained, "probe_seconds": seconds} if trained else
                       {"launcher": job["launcher"], "host": socket.gethostname(), "device": device,
                        "threads": torch.get_num_threads(), "seconds": seconds}))
    finally:
        run.release()


def launch_seconds(job: dict) -> float:
    """What the last job of a run took: a run that was only evaluated again for its probes keeps its training time in
    `seconds` and the evaluation's in `probe_seconds`."""
    return job.get("probe_seconds", job.get("seconds", 0.0))


def _job_command(job_json: Path) -> list[str]:
    return [sys.executable, "-m", "mmtm.analysis.sweep", str(job_json)]


def mps_note(devices: list[int], runs_per_device: int) -> str | None:
    """One line on how K runs share a GPU: through CUDA MPS when its control daemon runs, else by time-slicing."""
    if not devices or runs_per_device < 2:
        return None
    if (MPS_PIPE / "control").exists():
        return f"note: CUDA MPS control daemon found ({MPS_PIPE}): the {runs_per_device} runs on each GPU share it " \
               "through MPS"
    return (f"note: no CUDA MPS control daemon ({MPS_PIPE}/control): the {runs_per_device} runs on each GPU "
            "time-share it; `nvidia-cuda-mps-control -d` starts one")


def launch_local(specs: list[RunSpec], *, jobs: int = 1, devices: list[int] | None = None, runs_per_device: int = 1,
                 progress=None) -> list[str]:
    """Run every spec not yet done, `jobs` at a time (or len(devices)·runs_per_device on GPUs), each once the runs it
    waits for are done; returns the names of runs whose job failed, or that waited for a run that failed (their log:
    `job_log`). `progress(running, done, total)` is called as jobs move."""
    todo = [s for s in specs if not is_done(s)]
    # slots for the runs to do only: --jobs may be far more than there are runs, not its threads' share
    slots = [str(d) for d in devices for _ in range(runs_per_device)] if devices else [None] * min(jobs, len(todo))
    threads = thread_share(len(slots) if devices else jobs)
    running: dict[str, tuple[BaseProcess, RunSpec, int]] = {}
    free, failed, done = list(range(len(slots))), [], len(specs) - len(todo)
    try:
        while todo or running:
            while free and (spec := next((s for s in todo if is_ready(s)), None)) is not None:
                todo.remove(spec)
                slot = free.pop(0)
                device = slots[slot]
                job = write_job(spec, launcher="local", threads=threads, device=device)
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                proc = start_job(main, [str(job)], env=env, log=spec.dir / JOB_LOG)
                running[spec.name] = (proc, spec, slot)
            wait([proc.sentinel for proc, _, _ in running.values()], timeout=0.5)  # a job's end, or time to show
            for name, (proc, spec, slot) in list(running.items()):
                if proc.exitcode is None:
                    continue
                proc.join()
                del running[name]
                free.append(slot)
                done += 1
                if proc.exitcode != 0 or not is_done(spec):
                    failed.append(name)
            if todo and not running and not any(map(is_ready, todo)):  # what they wait for failed
                failed += [s.name for s in todo]
                todo = []
            if progress is not None:
                progress([s for _, s, _ in running.values()], done, len(specs))
    except BaseException:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.join()
        raise
    return failed


def job_log(spec: RunSpec) -> Path:
    return spec.dir / JOB_LOG


def check_launcher(launcher: str, devices: list[int] | None) -> None:
    """What a launch needs, before anything is created: for Slurm the submitit package and Slurm's commands on
    PATH; for GPUs, that each one named is present (once)."""
    if launcher == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError("--launcher slurm needs the submitit package (`pip install submitit`)") from None
        missing = [c for c in ("sbatch", "sacct", "srun") if shutil.which(c) is None]
        if missing:
            raise UserError(f"--launcher slurm: no {', '.join(missing)} on PATH; run on a Slurm login node, or use "
                            "--launcher local")
    if devices:
        import torch

        present = torch.cuda.device_count()
        absent = [d for d in devices if not 0 <= d < present]
        if absent:
            have = f"{present} GPUs (0..{present - 1})" if present else "no GPU torch can use"
            raise UserError(f"--gpus {','.join(map(str, devices))}: GPU {absent[0]} is not present; this machine "
                            f"has {have}")
        if len(set(devices)) != len(devices):
            raise UserError(f"--gpus {','.join(map(str, devices))} names a GPU twice; --runs-per-gpu K puts "
                            "K runs on each GPU")


def launch_slurm(specs: list[RunSpec], out: Path, *, wait: bool, partition: str | None, time_min: int,
                 gpus_per_run: int, cpus_per_run: int, array_parallelism: int, poll_s: float = 30.0,
                 progress=None) -> dict:
    """Submit the runs not yet done (and not queued or running) whose waited-for runs are done as one Slurm job array
    through submitit; with `wait`, poll until every job has ended, then submit those that waited. Returns
    {"submitted", "active", "failed"} run names."""
    import submitit

    folder = out / ".submitit"
    record_path = out / SLURM_RECORD
    record: dict[str, str] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    todo, active, waiting = [], [], []
    for spec in specs:
        if is_done(spec):
            continue
        if not is_ready(spec):
            waiting.append(spec)
            continue
        state = submitit.SlurmJob(folder, record[spec.name]).watcher.get_state(record[spec.name], mode="force") \
            if spec.name in record else None
        (active if state in SLURM_ACTIVE else todo).append(spec)
    jobs = {}
    if todo:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(name="mmtm", timeout_min=time_min, nodes=1, tasks_per_node=1,
                                   cpus_per_task=cpus_per_run, gpus_per_node=gpus_per_run,
                                   slurm_array_parallelism=array_parallelism,
                                   **({"slurm_partition": partition} if partition else {}))
        device = "cuda" if gpus_per_run else "cpu"
        functions = [submitit.helpers.CommandFunction(
            _job_command(write_job(s, launcher="slurm", threads=cpus_per_run, device=device))) for s in todo]
        echoed = io.StringIO()  # submitit echoes sbatch's stderr; the error line below says it once
        try:
            with contextlib.redirect_stderr(echoed):
                submitted = executor.submit_array(functions)
        except Exception as e:  # submitit raises several types for a refused sbatch; each means the same here
            said = next((line.strip() for line in f"{e}\n{echoed.getvalue()}".splitlines() if "error" in line.lower()),
                        " ".join(str(e).split())[:300])
            raise UserError(f"sbatch refused the job array of {len(todo)} runs: {said}") from None
        for spec, job in zip(todo, submitted):
            record[spec.name] = job.job_id
            jobs[spec.name] = job
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    if wait:
        watch = {**jobs, **{s.name: submitit.SlurmJob(folder, record[s.name]) for s in active}}
        while True:
            ended = {name for name, job in watch.items() if job.done(force_check=True)}
            if progress is not None:
                progress([s for s in specs if s.name in watch.keys() - ended], sum(map(is_done, specs)), len(specs))
            if ended == set(watch):
                break
            time.sleep(poll_s)
        if waiting and any(map(is_ready, waiting)):
            return launch_slurm(specs, out, wait=wait, partition=partition, time_min=time_min,
                                gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
                                array_parallelism=array_parallelism, poll_s=poll_s, progress=progress)
    failed = [s.name for s in specs if wait and not is_done(s)]
    return {"submitted": [s.name for s in todo], "active": [s.name for s in active], "failed": failed}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: python -m mmtm.analysis.sweep RUN/job.json")
    try:
        run_job(argv[0])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
