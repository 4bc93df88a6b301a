"""Every command of the README's bash blocks, run in order as written, in a scratch folder:
`python3 benchmarks/readme_commands.py [--keep DIR]`.

Shrunk where it trains: `mmtm prep synthetic` makes 3 classes of 8 objects at 32 px, `mmtm train` and `mmtm compare`
get a config of a width-4 network and 3 steps per epoch, 1 epoch, and a seed list its first seed. `make demo` runs
the commands its Makefile target prints (`make -n demo`), shrunk the same way. Not run, with the reason printed:
the install lines (they install into the reader's own environment; a fresh clone's `make test` runs the Makefile's
install) and `make test` (the test suite itself). A command passes when it exits 0.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from readme_compare import MMTM, ROOT, TINY, first_seed  # the shrinking the compare replay uses

INSTALL = ("python3", "python", "pip", "git", "cd", "conda", ".", "source")


def readme_commands(text: str) -> list[list[str]]:
    """The commands of every ```bash block, in order: continuation lines joined, `&&` chains split, comments
    dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            while "&&" in words:
                i = words.index("&&")
                commands.append(words[:i])
                words = words[i + 1:]
            if words:
                commands.append(words)
    return commands


def shrunk(words: list[str], config: Path) -> list[str]:
    """An `mmtm ...` command's arguments, made small where it trains."""
    words = list(words)
    if "--seeds" in words:
        words[words.index("--seeds") + 1] = first_seed(words)
    if words[:2] == ["prep", "synthetic"]:
        return [*words, "--classes", "3", "--per-class", "8", "--image-size", "32", "--workers", "1"]
    if words[0] in ("train", "compare") and "--collect" not in words:
        return [*words, "--config", str(config), "--epochs", "1"]
    return words


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="readme-commands-"))
    scratch.mkdir(parents=True, exist_ok=True)
    config = scratch / "tiny.json"
    config.write_text(json.dumps(TINY))
    failed, ran = [], 0
    for words in readme_commands((ROOT / "README.md").read_text()):
        shown = " ".join(words)
        if words[0] in INSTALL:
            print(f"- {shown}\n  not run: it installs into your own environment (a fresh clone's `make test` runs "
                  "the Makefile's install)", flush=True)
            continue
        if words == ["make", "test"]:
            print(f"- {shown}\n  not run: it is the test suite", flush=True)
            continue
        if words[:2] == ["make", "demo"]:
            venv = scratch / "venv"  # a venv the Makefile takes as installed, so that -n prints the demo alone
            venv.mkdir(exist_ok=True)
            (venv / ".installed").touch()
            printed = subprocess.run(["make", "-n", "-C", str(ROOT), "demo", f"VENV={venv}", f"DEMO={scratch / 'demo'}",
                                      "MMTM=mmtm"], capture_output=True, text=True)
            steps = [shlex.split(line)[1:] for line in printed.stdout.splitlines() if line.startswith("mmtm ")]
        elif words[0] == "mmtm":
            steps = [words[1:]]
        else:
            print(f"- {shown}\n  FAILED: not a command this script knows how to run")
            failed.append(shown)
            continue
        for step in steps:
            ran += 1
            command = shrunk(step, config)
            print(f"$ mmtm {' '.join(command)}", flush=True)
            r = subprocess.run([*MMTM, *command], capture_output=True, text=True, cwd=scratch)
            lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
            if r.returncode != 0:
                print(f"  FAILED ({r.returncode}): {lines[-1] if lines else ''}")
                failed.append(shown)
    if args.keep is None:
        shutil.rmtree(scratch)
    print(f"{len(failed)} README commands failed: {failed}" if failed
          else f"all {ran} README commands run passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
