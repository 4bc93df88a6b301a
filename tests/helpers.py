"""What the command-level tests share: the CLI runner, a tiny training setting, CSV reading."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from typer.testing import CliRunner

from cli.app import app

BIN = Path(sys.executable).parent  # the venv's mmtm and torchrun, for tests that start real processes
# A width-4 network on the CPU with the torch loader: seconds per run.
TINY = ["--preset", "demo", "--width", "4", "--batch-size", "4", "--loader", "torch", "--threads", "1",
        "--device", "cpu", "--lr", "0.05"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_command(data, out, *extra) -> list[str]:
    """`mmtm train` as a real process: 5 epochs of the tiny network; `extra` names the policy and more flags."""
    return [str(BIN / "mmtm"), "train", "--data", str(data), "--out", str(out), "--epochs", "5", *TINY, *extra]
