"""Flags renamed so that each idea has one name in every command. An old spelling still works: the command line is
rewritten before Click reads it, with one `note:` line on stderr giving the new name."""
from __future__ import annotations

import sys

# Parallelism reads alike everywhere: --jobs (runs at once), --workers (processes of prep and bench render),
# --loader-threads and --loader-workers (a run's loader), --gpus and --runs-per-gpu, as Slurm's --gpus-per-run.
RENAMED = {"--threads": "--loader-threads", "--source-workers": "--loader-workers", "--devices": "--gpus",
           "--runs-per-device": "--runs-per-gpu"}


def respelled(args: list[str], known: set[str], stop: set[str] = frozenset()) -> list[str]:
    """`args` with each old flag whose new name is in `known` renamed, and `--views 0 6` (a pair as two words) made
    `--views 0,6`, up to `--` or the first of `stop` (a group's subcommands, which rewrite their own)."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--" or arg in stop:
            break
        name, eq, value = arg.partition("=")
        if RENAMED.get(name) in known:
            print(f"note: {name} is now {RENAMED[name]}", file=sys.stderr)
            args[i] = RENAMED[name] + eq + value
        elif arg == "--views" and arg in known and all(a.isdigit() for a in args[i + 1:i + 3]) and len(args) > i + 2:
            print(f"note: --views {args[i + 1]} {args[i + 2]} is written --views {args[i + 1]},{args[i + 2]}",
                  file=sys.stderr)
            args[i + 1:i + 3] = [f"{args[i + 1]},{args[i + 2]}"]
    return args


class Respelled:
    """A Click command or group (a mixin before it) that reads the old spellings of its options."""

    def parse_args(self, ctx, args):
        known = {opt for param in self.params for opt in getattr(param, "opts", ())}
        return super().parse_args(ctx, respelled(args, known, set(getattr(self, "commands", {}))))
