"""Job processes forked from the torch-preloaded server (mmtm/analysis/jobs.py) behave as fresh processes would: the
given environment and nothing else, the platform's start method for their own workers, torch's threads from
OMP_NUM_THREADS, output in their log, the target's return value as exit code."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

from mmtm.analysis.jobs import PRELOAD, start


def _report(path: str) -> int:
    import torch

    print("to stdout")
    print("to stderr", file=sys.stderr)
    Path(path).write_text(json.dumps({"env": dict(os.environ), "start_method": multiprocessing.get_start_method(),
                                      "threads": torch.get_num_threads(), "cuda": torch.cuda.is_initialized(),
                                      "pid": os.getpid()}))
    return 3


def _fail() -> None:
    raise ValueError("the job's own error")


def test_a_job_has_its_environment_log_threads_and_exit_code(tmp_path):
    env = {"ONLY": "this", "OMP_NUM_THREADS": "3", "PATH": os.environ["PATH"]}
    proc = start(_report, str(tmp_path / "r.json"), env=env, log=tmp_path / "job.log")
    proc.join(120)
    assert proc.exitcode == 3
    seen = json.loads((tmp_path / "r.json").read_text())
    assert seen["env"] == env and seen["threads"] == 3 and seen["cuda"] is False
    assert seen["pid"] == proc.pid != os.getpid()
    fresh = subprocess.run([sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert seen["start_method"] == fresh  # not the forkserver the job came from
    assert sorted((tmp_path / "job.log").read_text().splitlines()) == ["to stderr", "to stdout"]


def test_a_job_that_raises_exits_1_with_its_traceback_in_the_log(tmp_path):
    proc = start(_fail, env=dict(os.environ), log=tmp_path / "job.log")
    proc.join(120)
    assert proc.exitcode == 1
    assert "ValueError: the job's own error" in (tmp_path / "job.log").read_text()


ASKS_CUDA = """
import importlib, sys, torch
asked = []
def spy(name, real):
    def call(*a, **k):
        asked.append(name)
        return real(*a, **k)
    return call
torch._C._cuda_getDeviceCount = spy("_cuda_getDeviceCount", torch._C._cuda_getDeviceCount)
torch.cuda.is_available = spy("is_available", torch.cuda.is_available)
torch.cuda.device_count = spy("device_count", torch.cuda.device_count)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(asked, torch.cuda.is_initialized())
"""


def test_the_servers_imports_ask_nothing_of_cuda():
    """What the server imports must leave CUDA alone (not even count the GPUs, which starts the driver), so that each
    forked job can still choose its GPU with CUDA_VISIBLE_DEVICES and initialise CUDA itself."""
    r = subprocess.run([sys.executable, "-c", ASKS_CUDA, *PRELOAD], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[] False"


# A starter that forks a job, which watches it as a job of mmtm.analysis.jobs does, prints the job's pid and waits.
STARTER = """
import os, sys, time
from mmtm.analysis.jobs import _die_with
starter = os.getpid()
pid = os.fork()
if pid == 0:
    _die_with(starter)
    time.sleep(120)
    os._exit(0)
print(pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie has ended
    except FileNotFoundError:
        return True


def test_a_job_dies_with_the_process_that_started_it_even_by_kill_9():
    import signal
    import time

    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    job = int(starter.stdout.readline())
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.time() + 30
    while not _gone(job) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(job), "the job outlived its starter"
