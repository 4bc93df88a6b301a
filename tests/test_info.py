"""`mmtm info`: every fact, as JSON and as a table; "none" for the GPUs of a machine without one."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmtm.cli.app import app
from mmtm.cli.info import LABELS, shown
from helpers import invoke
from mmtm.training import environment

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["version", "commit", "python", "torch", "torchvision", "dali", "cuda_build", "cuda_available", "torch_gpus",
        "dali_gpus", "device", "loader", "decode", "bf16", "cuda_graphs", "egl", "cpu_cores", "cpu_cores_usable"]


@pytest.fixture(scope="module")
def facts() -> dict:
    r = invoke("info", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_json_has_every_fact(facts):
    assert list(facts) == KEYS
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert facts["commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    assert facts["version"] == importlib.metadata.version("mmtm")
    assert (facts["python"], facts["torch"]) == (platform.python_version(), torch.__version__)
    assert facts["cuda_available"] == torch.cuda.is_available()
    assert (facts["cpu_cores"], facts["cpu_cores_usable"]) == (os.cpu_count(), len(os.sched_getaffinity(0)))
    try:
        import nvidia.dali  # noqa: F401
        assert facts["loader"] == "dali"
    except ImportError:
        assert (facts["loader"], facts["dali"]) == ("torch", "not installed")
    assert facts["egl"] and "\n" not in facts["egl"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_gpu_facts_say_none(facts):
    assert (facts["torch_gpus"], facts["dali_gpus"], facts["device"], facts["decode"]) == ("none", "none", "cpu",
                                                                                           "cpu")
    assert (facts["cuda_available"], facts["bf16"], facts["cuda_graphs"]) == (False, False, False)


def test_the_table_names_each_fact_and_its_value(facts):
    r = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})  # wide enough that no cell wraps
    assert r.exit_code == 0, r.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in r.output.splitlines()
            if line.startswith("│")]
    assert rows == [[LABELS[key], shown(facts[key])] for key in KEYS]


def test_egl_failure_is_one_line(monkeypatch):
    monkeypatch.setattr(environment, "EGL_PROBE", "raise RuntimeError('no EGL display here')")
    assert environment._egl() == "RuntimeError: no EGL display here"
