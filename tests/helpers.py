"""What the command-level tests share: the CLI runner, a tiny training setting, CSV reading."""
from __future__ import annotations

import csv
import ctypes
import os
import sys
from pathlib import Path

from typer.testing import CliRunner

from mmtm.cli.app import app, main
from mmtm.analysis.jobs import start

BIN = Path(sys.executable).parent  # the venv's mmtm and torchrun, for tests that start real processes
# A width-4 network on the CPU, BatchNorm statistics from 2 batches: seconds per run. The torch loader reads in the
# test's process (--loader-threads 0): forking a DataLoader worker from a process holding torch costs ~0.05 s of CPU
# each time, three loaders a run. The worker path is tested by test_loaders, the DDP tests and
# test_training.py::test_reading_in_process_trains_exactly_like_a_worker.
TINY = ["--preset", "demo", "--width", "4", "--batch-size", "4", "--loader", "torch", "--loader-threads", "0",
        "--device", "cpu", "--lr", "0.05", "--precise-bn", "2"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_args(data, out, *extra, epochs: int = 5) -> list[str]:
    """`mmtm train` arguments for the tiny network; `extra` names the policy and more flags."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *TINY, *extra]


# Linux capabilities through which root ignores file modes: DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER.
_FILE_MODE_CAPS = (1 << 1) | (1 << 2) | (1 << 3)


def _obey_file_modes() -> None:
    """As root, drop the capabilities that override file modes (effective and permitted, so access() agrees): from
    here on this process meets file modes as their owner would. A plain user already does."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # (effective, permitted, inheritable) × (capabilities 0–31, 32–63)
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0] &= ~_FILE_MODE_CAPS & 0xFFFFFFFF
    data[1] &= ~_FILE_MODE_CAPS & 0xFFFFFFFF
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _mmtm(argv: list[str], cwd: str | None, obey_file_modes: bool) -> None:
    os.setsid()  # its own process group, as a command started from a shell: killpg reaches what it started
    if cwd is not None:
        os.chdir(cwd)
    if obey_file_modes:
        _obey_file_modes()
    sys.argv = ["mmtm", *argv]
    main()


def start_mmtm(*args, env: dict | None = None, log=os.devnull, cwd=None, obey_file_modes: bool = False):
    """`mmtm ARGS` as a real process (a multiprocessing Process: .pid, .exitcode, .kill(), .join()) with os.environ
    updated by `env`, its output appended to `log`, run in `cwd`, meeting file modes even when the tests run as
    root. It is forked from the job server that sweeps use (mmtm/analysis/jobs.py), which has imported torch already:
    the console script's code in a process of its own, without the ~3.5 s a fresh Python spends on imports."""
    return start(_mmtm, [str(a) for a in args], None if cwd is None else str(cwd), obey_file_modes,
                 env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, log=log)


def run_mmtm(*args, timeout: float = 300, **kw) -> int:
    """start_mmtm and wait for it: its exit code."""
    proc = start_mmtm(*args, **kw)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"mmtm {' '.join(map(str, args[:2]))} did not end within {timeout} s")
    return proc.exitcode


def stop_after_epoch(monkeypatch, epoch: int) -> None:
    """Make training raise KeyboardInterrupt right after epoch `epoch`'s last.pt is written, as Ctrl-C there would
    (`monkeypatch.undo()` lifts it)."""
    from mmtm.training import loop

    save = loop.save_checkpoint

    def save_then_stop(state, path):
        save(state, path)
        if path.name == "last.pt" and state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
