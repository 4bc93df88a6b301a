"""The README's `mmtm compare` commands replayed in order, shrunk, into the folders the README names (under a scratch
folder), each checked for the table the README describes: `python3 benchmarks/readme_compare.py [--keep DIR]`.

Shrunk: `--data` is a tiny synthetic set made here (3 classes, 32 px), every seed list is its first seed, and each
training command gets a config of a width-4 network and 3 steps per epoch, 1 epoch. Commands that need GPUs
(`--gpus`) or Slurm (`--launcher slurm`) are run too on a machine without them: they must then stop with one
`error:` line and create nothing. What is checked per training command: it keeps no run (each command has its own
folder, so none reuses another's runs), and its comparison.json holds the policies, seeds, cells and baselines the
command asks for; the `--collect` command rebuilds its committed comparison byte for byte.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMTM = [sys.executable, "-c", "from mmtm.cli.app import main; main()"]  # works installed or from a bare checkout
TINY = {"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 0, "device": "cpu", "precise_bn": 2,
        "max_steps_per_epoch": 3}
DEFAULT_POLICIES = ["vanilla", "balanced", "random", "flipped"]


DOCUMENTS = ("README.md", "docs/guide.md", "docs/results.md")  # where a user copies commands from, in reading order


def readme_commands() -> list[list[str]]:
    """Every `mmtm compare` line of the bash blocks of the README and the guide and results pages, continuation lines
    joined, comments dropped."""
    text = "\n".join((ROOT / name).read_text() for name in DOCUMENTS)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["mmtm", "compare"]:
                commands.append(words[2:])
    return commands


def flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def first_seed(words: list[str]) -> str:
    """The first seed of `--seeds` (a list like 0,1,2 or a range like 0-9)."""
    return re.split(r"[,-]", flag(words, "--seeds"))[0]


def shrunk(words: list[str], data: Path, scratch: Path, config: Path) -> list[str]:
    words = list(words)
    for name, value in (("--data", str(data)), ("--out", str(scratch / flag(words, "--out").lstrip("/")))):
        if name in words:
            words[words.index(name) + 1] = value
    if "--seeds" in words:
        words[words.index("--seeds") + 1] = first_seed(words)
    if "--collect" in words:
        words[words.index("--collect") + 1] = str(ROOT / flag(words, "--collect"))
        return words
    seeds = [] if "--seeds" in words else ["--seeds", "0"]
    return [*words, *seeds, "--config", str(config), "--epochs", "1"]


def expected(words: list[str]) -> dict:
    policies = (flag(words, "--policies") or ",".join(DEFAULT_POLICIES)).split(",")
    axes = [(k, v.split(",")) for k, _, v in (s.partition("=") for s in
                                               (words[i + 1] for i, w in enumerate(words) if w == "--set"))]
    cells = [",".join(f"{k}={v}" for (k, _), v in zip(axes, combo))
             for combo in itertools.product(*(v for _, v in axes))]
    return {"policies": policies + (["single-view0", "single-view1"] if "--baselines" in words else []),
            "seeds": [int(first_seed(words)) if "--seeds" in words else 0],
            "cells": sorted(cells)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    parser.add_argument("--only", help="Comma-separated --out folders as the README writes them: run only those "
                                       "commands (a quick look; the order still matters for the check).")
    args = parser.parse_args()
    only = None if args.only is None else set(args.only.split(","))
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="readme-compare-"))
    scratch.mkdir(parents=True, exist_ok=True)
    data, config = scratch / "data", scratch / "tiny.json"
    config.write_text(json.dumps(TINY))
    if not (data / "dataset.json").is_file():
        subprocess.run([*MMTM, "prep", "synthetic", "--out", str(data), "--classes", "3", "--per-class", "16",
                        "--image-size", "32", "--workers", "1", "--quiet"], check=True)
    failures = []
    commands = [w for w in readme_commands() if only is None or flag(w, "--out") in only]
    for words in commands:
        command = shrunk(words, data, scratch, config)
        needs = "--gpus" in words or flag(words, "--launcher") == "slurm"
        out = Path(flag(command, "--out"))
        print("$ mmtm compare " + " ".join(words), flush=True)
        r = subprocess.run([*MMTM, "compare", *command], capture_output=True, text=True, cwd=scratch)
        lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
        if needs and r.returncode == 2:  # no GPU or no Slurm here: refused before anything was made
            ok = lines[-1].startswith("error: ") and not out.exists()
            print(f"  refused here: {lines[-1]}" + ("" if ok else "  <-- but it left files or said more"))
            failures += [] if ok else [words]
            continue
        if r.returncode != 0:
            print(f"  FAILED ({r.returncode}): {lines[-1] if lines else ''}")
            failures.append(words)
            continue
        if "--collect" in words:
            committed = ROOT / Path(flag(words, "--collect")).parent
            same = all((out / n).read_bytes() == (committed / n).read_bytes()
                       for n in ("comparison.json", "comparison.md"))
            print(f"  rebuilt {committed.name}: {'byte for byte' if same else 'DIFFERENT'}")
            failures += [] if same else [words]
            continue
        table = json.loads((out / "comparison.json").read_text())
        want = expected(words)
        got = {"policies": table["policies"], "seeds": table["seeds"], "cells": sorted(table["cells"])}
        kept = next((line for line in lines if " runs kept from " in line), "")
        ok = got == want and kept.startswith("0 of ")
        print(f"  {kept}; policies {got['policies']}, seeds {got['seeds']}, cells {got['cells']}"
              + ("" if ok else f"  <-- expected {want} and no run kept"))
        failures += [] if ok else [words]
    if args.keep is None:
        shutil.rmtree(scratch)
    print(f"{len(failures)} of {len(commands)} README compare commands failed" if failures
          else f"all {len(commands)} README compare commands run did what the README says")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
