"""Job processes for sweeps and `bench pack`, forked from one server process that imported torch once.

A job is a process of its own — own pid and exit code, killable, its output in its log, the environment it is
given — as `subprocess.Popen([python, ...], env=...)` would start, but without the ~3.5 s every new Python spends
importing torch and torchvision before its first step (a sweep of short runs spent most of its time there).
multiprocessing's forkserver imports them once, in a fresh process that runs nothing else, and forks each job from
it in a few hundredths of a second. That server never touches CUDA, so each job picks its GPU through
CUDA_VISIBLE_DEVICES as a fresh process does.

A job dies with the process that started it, however that one ends (kill -9 included): the server it was forked
from outlives its client while any job runs, so each job watches its starter itself.
"""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess

# What the server imports once; a job imports anything else itself. Not DALI: its import may initialise CUDA.
# TensorBoard's writer (~0.25 s a job) is optional: the server skips a module that does not import.
PRELOAD = ["torch", "torchvision", "mmtm.training.loop", "torch.utils.tensorboard"]


def start(target: Callable[..., int | None], *args, env: dict[str, str],
          log: str | os.PathLike | None = None) -> BaseProcess:
    """target(*args) in a new job process with exactly the environment `env`; its stdout and stderr are appended
    to `log` (or stay the caller's). The process exits with target's return value (None: 0), or 1 after printing
    the traceback of an exception it raised."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    proc = ctx.Process(target=_run, args=(target, args, env, None if log is None else os.fspath(log), os.getpid()))
    proc.start()
    return proc


def _run(target, args, env: dict[str, str], log: str | None, starter: int) -> None:
    _die_with(starter)
    os.environ.clear()
    os.environ.update(env)
    # The job's own workers (DataLoader's) start as in a fresh process, not through the forkserver it came from.
    multiprocessing.set_start_method(None, force=True)
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if env.get("OMP_NUM_THREADS"):
        import torch  # OpenMP read the variable when the server imported torch; a fresh process would obey it

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.exit(target(*args))


def _die_with(starter: int) -> None:
    """Kill this process once `starter` has ended: a pidfd becomes readable when its process exits."""
    try:
        pidfd = os.pidfd_open(starter)
    except ProcessLookupError:  # it ended before this job began
        os._exit(1)

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-starter", daemon=True).start()
