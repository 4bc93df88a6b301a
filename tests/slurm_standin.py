"""Stand-ins for Slurm's sbatch, sacct, srun and scancel that run submitted jobs on this machine, so that the real
submitit code path of `mmtm compare --launcher slurm` runs in a test. `python slurm_standin.py install BIN STATE`
writes the four commands into BIN; they keep their state (job ids, task states, every submitted script) in the
JSON file STATE.

sbatch SCRIPT: reads the script's #SBATCH lines, answers "Submitted batch job N" at once, and runs the tasks of
the array one after another in a detached process, each with the environment Slurm would give it (SLURM_JOB_ID,
SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID, ...). Tasks listed in SLURM_STANDIN_FAIL (comma-separated indices) fail
without running, for this submission only; with SLURM_STANDIN_REFUSE set, sbatch prints it and fails. sacct -j N:
`JobID|State|NodeList` rows. srun: runs its command with --output/--error (Slurm's %A %a %j %t patterns filled in)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def state(path: Path):
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"next": 1000, "tasks": {}, "submissions": []}
        yield data
        path.write_text(json.dumps(data, indent=1))


def sbatch(args: list[str], path: Path) -> None:
    if os.environ.get("SLURM_STANDIN_REFUSE"):  # as sbatch refusing a job (a bad partition, say) answers
        print(os.environ["SLURM_STANDIN_REFUSE"], file=sys.stderr)
        sys.exit(1)
    script = Path(args[-1]).read_text()
    flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", script))
    # a single job is task -1: no array variables, its own name
    first, last = (int(x) for x in flags["array"].split("%")[0].split("-")) if "array" in flags else (-1, -1)
    fail = {int(i) for i in os.environ.get("SLURM_STANDIN_FAIL", "").split(",") if i.strip()}
    with state(path) as s:
        job = s["next"]
        s["next"] += 1
        s["submissions"].append({"job": job, "flags": flags, "script": script})
        for i in range(first, last + 1):
            s["tasks"][_name(job, i)] = "PENDING"
    copy = path.parent / f"{job}.sh"
    copy.write_text(script)
    subprocess.Popen([sys.executable, __file__, "run", str(path), str(copy), str(job), str(first), str(last),
                      ",".join(map(str, sorted(fail)))], start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job}")


def run(path: Path, script: Path, job: int, first: int, last: int, fail: str) -> None:
    folder = Path(re.search(r"submitit\.core\._submit (\S+)", script.read_text()).group(1).strip("'\""))
    failing = {int(i) for i in fail.split(",") if i}
    for i in range(first, last + 1):
        pickle = folder / f"{_name(job, i)}_submitted.pkl"
        deadline = time.time() + 60
        while not pickle.exists() and time.time() < deadline:  # submitit renames it once sbatch has answered
            time.sleep(0.1)
        with state(path) as s:
            s["tasks"][_name(job, i)] = "RUNNING"
        if i in failing:
            code = 1
        else:
            env = {**os.environ, "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
                   "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost",
                   **({"SLURM_JOB_ID": str(job * 100 + i), "SLURM_ARRAY_JOB_ID": str(job),
                       "SLURM_ARRAY_TASK_ID": str(i)} if i >= 0 else {"SLURM_JOB_ID": str(job)})}
            code = subprocess.run(["bash", str(script)], env=env).returncode
        with state(path) as s:
            s["tasks"][_name(job, i)] = "COMPLETED" if code == 0 else "FAILED"


def _name(job: int, task: int) -> str:
    return f"{job}_{task}" if task >= 0 else str(job)


def sacct(args: list[str], path: Path) -> None:
    jobs = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    with state(path) as s:
        for task, st in s["tasks"].items():
            if task.split("_")[0] in jobs:  # a single job's row is its id alone
                print(f"{task}|{st}|localhost")


def srun(args: list[str]) -> None:
    out = err = None
    rest = list(args)
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag in ("--output", "--error"):
            value = rest.pop(0)
            for key, env in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
                value = value.replace(key, os.environ.get(env, ""))
            value = value.replace("%t", os.environ.get("SLURM_PROCID", "0"))
            out, err = (value, err) if flag == "--output" else (out, value)
    with open(out or os.devnull, "a") as o, open(err or out or os.devnull, "a") as e:
        sys.exit(subprocess.run(rest, stdout=o, stderr=e).returncode)


def install(bin_dir: Path, path: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "sacct", "srun", "scancel"):
        cmd = bin_dir / name
        cmd.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {name} {path} \"$@\"\n")
        cmd.chmod(0o755)


if __name__ == "__main__":
    command, *argv = sys.argv[1:]
    if command == "install":
        install(Path(argv[0]), Path(argv[1]))
    elif command == "run":
        run(Path(argv[0]), Path(argv[1]), *map(int, argv[2:5]), argv[5] if len(argv) > 5 else "")
    elif command == "sbatch":
        sbatch(argv[1:], Path(argv[0]))
    elif command == "sacct":
        sacct(argv[1:], Path(argv[0]))
    elif command == "srun":
        srun(argv[1:])
    elif command == "scancel":
        pass
