"""`mmtm compare`: policies × seeds × grid cells, launched here or on Slurm, with eval-cur, tables and plots."""
from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from mmtm.cli.errors import user_errors
from mmtm.cli.values import int_list
from mmtm.loaders.errors import UserError
from mmtm.training.presets import AUTO, AUTO_HELP, shown

LAUNCHERS = ("local", "slurm")


@user_errors
def compare(
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder (from `mmtm prep`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the runs, comparison.md/.json and plots."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma-separated seeds; seed k of every policy shares its "
                                                "initial weights and data order."),
    policies: Optional[str] = typer.Option(None, show_default="vanilla,balanced,random,flipped",
                                           help="Comma-separated policies."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=V1,V2", help="A grid axis over a config "
                                                                 "setting, crossed with policies and seeds "
                                                                 "(view pairs as --views writes them: views=0,6,0,3 is "
                                                                 "0,6 and 0,3; repeatable); runs go to OUT/KEY=V/."),
    baselines: bool = typer.Option(False, "--baselines", help="Also train each view alone (the single-view "
                                                              "baselines) for every seed and cell."),
    preset: str = typer.Option(AUTO, help=f"demo (2-core CPU), shortcut or digits (those sets on a 2-core CPU, "
                                          f"docs/digits-and-shortcut.md) or paper (docs/science.md §5); {AUTO_HELP}."),
    config: Optional[Path] = typer.Option(None, help="JSON config overriding the preset."),
    epochs: Optional[int] = typer.Option(None, show_default=shown("epochs"), help="Maximum epochs of every run."),
    device: Optional[str] = typer.Option(None, show_default="auto; cuda with --gpus", help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, show_default=shown("loader"), help="auto | dali | torch."),
    jobs: Optional[int] = typer.Option(None, show_default="1", help="Runs at once on this machine, each with "
                                                                   "cores/JOBS threads."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs to use, e.g. 0,1: runs go to them round-robin."),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", help="Runs packed on each GPU at once (CUDA MPS is used "
                                                                "when its daemon runs)."),
    launcher: str = typer.Option("local", help="local (this machine) or slurm (one job array through submitit)."),
    partition: Optional[str] = typer.Option(None, help="slurm: partition."),
    time_min: int = typer.Option(240, help="slurm: time limit per run, minutes."),
    gpus_per_run: int = typer.Option(0, help="slurm: GPUs per run."),
    cpus_per_run: int = typer.Option(4, help="slurm: CPUs per run."),
    array_parallelism: int = typer.Option(64, help="slurm: array tasks running at once."),
    no_wait: bool = typer.Option(False, "--no-wait", help="slurm: return once the jobs are submitted; the same "
                                                          "command later collects them."),
    collect: Optional[Path] = typer.Option(None, help="Train nothing: rebuild the comparison from the runs' "
                                                      "evidence under this folder (e.g. a committed "
                                                      "docs/finding/runs) into --out."),
    retrain_changed: bool = typer.Option(False, "--retrain-changed", help="Runs in --out trained with other "
                                         "settings or data than asked for are moved to OUT/.replaced-<time>/ and "
                                         "trained again (without it they are refused)."),
    probe: bool = typer.Option(False, "--probe", help="Also measure each branch by a linear probe on its frozen "
                                                      "features (eval-cur --probe): the tables gain probe_m0, "
                                                      "probe_m1. Kept runs without probes are evaluated again, "
                                                      "not retrained."),
) -> None:
    """Compare training policies over seeds and grid cells: train, eval-cur (best and last checkpoint), tables and
    plots.

    OUT/comparison.md gives, per policy, mean ± std and a 95% t-interval over seeds of test accuracy, the heads'
    accuracies, d_util and d_speed (after an equal number of regular steps, at half of training, at the end), both
    checkpoints; paired per-seed differences with permutation p-values (exact up to 16 seeds), Holm-adjusted over the
    table, and McNemar counts; the rank correlation of d_speed with d_util within each policy and across them; the
    single-view baselines with --baselines. OUT/comparison.json holds the numbers (docs/comparison-schema.md);
    comparison.md is rendered from it.

    Re-running the same command resumes: finished runs are kept, unfinished or failed ones continue. A run in --out
    trained with other settings or data is refused (or, with --retrain-changed, moved aside and trained again); one
    sweep at a time works in an --out.

    \b
    Examples:
      mmtm compare --data demo/data --out demo/compare
      mmtm compare --data demo/data --out c1 --seeds 0 --policies vanilla,pmr --probe
      mmtm compare --data demo/data --out c2 --jobs 2 --baselines
      mmtm compare --data demo/data --out c3 --policies vanilla,balanced \\
        --set views=0,6,0,3,3,9 --seeds 0,1,2     # 3 view pairs
      mmtm compare --data data/mn40 --out c4 --preset paper --device cuda \\
        --gpus 0,1 --runs-per-gpu 4                # 8 runs at once
      mmtm compare --data data/mn40 --out c5 --preset paper --launcher slurm \\
        --partition gpu --gpus-per-run 1 --no-wait  # then the same again
      mmtm compare --collect docs/finding/runs --out /tmp/finding
    """
    from mmtm.analysis.compare import DEFAULT_POLICIES, collect as collect_comparison, parse_axes, run_comparison
    from mmtm.training.presets import chosen

    if collect is not None:
        _finish(collect_comparison(collect, out))
        return
    if data is None:
        raise UserError("--data is required (a folder made by `mmtm prep`), unless --collect names runs")
    seed_list = int_list(seeds, "--seeds")
    policy_list = DEFAULT_POLICIES if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip())
    if not policy_list or len(set(policy_list)) != len(policy_list):
        raise UserError("--policies must list at least one policy and none twice")
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    for flag, value in (("--jobs", 1 if jobs is None else jobs), ("--runs-per-gpu", runs_per_gpu),
                        ("--time-min", time_min), ("--cpus-per-run", cpus_per_run),
                        ("--array-parallelism", array_parallelism)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if gpus_per_run < 0:
        raise UserError(f"--gpus-per-run must be at least 0, got {gpus_per_run}")
    device_list = int_list(gpus, "--gpus") if gpus else None
    _check_together(jobs, launcher, device_list, device)
    axes = parse_axes(set_ or [])
    device = device or ("cuda" if device_list else None)
    preset = chosen(preset, device or "auto")
    with _Progress() as progress, _sigterm_as_interrupt(), _interrupt_hint():
        path = run_comparison(
            str(data), out, seeds=seed_list, policies=policy_list, preset=preset,
            config_file=str(config) if config else None, axes=axes, baselines=baselines,
            launcher=launcher, jobs=jobs or 1, devices=device_list, runs_per_device=runs_per_gpu,
            slurm={"partition": partition, "time_min": time_min, "gpus_per_run": gpus_per_run,
                   "cpus_per_run": cpus_per_run, "array_parallelism": array_parallelism},
            wait=not no_wait, progress=progress.update, retrain_changed=retrain_changed, probe=probe, epochs=epochs,
            loader=loader, device=device)
    if path is not None:
        _finish(path)


def _finish(path: Path) -> None:
    """The summary table, then where every file is."""
    import json

    from mmtm.analysis.compare import terminal_summary

    typer.echo(terminal_summary(json.loads((path.parent / "comparison.json").read_text())))
    typer.echo(f"wrote {path} (tables), {path.parent / 'comparison.json'} (numbers) and the figures beside them")


def _check_together(jobs: Optional[int], launcher: str, devices: Optional[list[int]], device: Optional[str]) -> None:
    """Flags that contradict each other, or ask for more job processes than the system can run."""
    if jobs is not None and launcher == "slurm":
        raise UserError("--jobs is for --launcher local; with slurm, --array-parallelism sets the runs at once")
    if jobs is not None and devices:
        raise UserError("--jobs does not apply with --gpus: the runs at once are the GPUs × --runs-per-gpu")
    if devices and device is not None and not device.startswith("cuda"):
        raise UserError(f"--gpus {','.join(map(str, devices))} names GPUs, but --device is {device!r}")
    if devices and launcher == "slurm":
        raise UserError("--gpus is for --launcher local; with slurm, --gpus-per-run asks for GPUs")
    most = _most_processes()
    if jobs is not None and jobs > most:
        raise UserError(f"--jobs {jobs}: more job processes than this system can run at once ({most})")


def _most_processes() -> int:
    """The processes this user may run (RLIMIT_NPROC), or the system's pid range when that is unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 2 ** 22  # Linux's largest
    return pid_max if soft == resource.RLIM_INFINITY else min(soft, pid_max)


@contextlib.contextmanager
def _interrupt_hint():
    """Ctrl-C (or SIGTERM) says how to go on: the same command keeps the runs that have their evidence."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted: run the same command again to finish; runs with their evidence are kept, the others "
              "resume from their last.pt", file=sys.stderr)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what timeout, Slurm and systemd send) ends the sweep as Ctrl-C does: its jobs are stopped first."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: the caller's own handling stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """The sweep as a whole (runs done / total, time left) and each running job (epoch it is at). The bar starts at
    the first update, so input refused before any run starts leaves the error line alone on the terminal. When
    stdout is not a terminal (CI, tee, Slurm, nohup) it prints one line per run that ends instead."""

    def __enter__(self):
        import sys
        import time

        self.bar = None
        self.jobs: dict[str, int] = {}
        self.piped = not sys.stdout.isatty()
        self.clock = time.monotonic
        self.running: dict[str, tuple] = {}  # piped: name -> (spec, when it was first seen running)
        return self

    def update(self, running, done: int, total: int) -> None:
        if self.piped:
            self._lines(running, done, total)
            return
        import csv

        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.__enter__()
            self.sweep = self.bar.add_task("sweep (runs)", total=total, completed=done)
        self.bar.update(self.sweep, completed=done)
        names = {s.name: s for s in running}
        for name in list(self.jobs):
            if name not in names:
                self.bar.remove_task(self.jobs.pop(name))
        for name, spec in names.items():
            epochs_csv = spec.dir / "epochs.csv"
            try:
                with epochs_csv.open() as f:
                    epochs_done = max(0, sum(1 for _ in csv.reader(f)) - 1)
            except OSError:
                epochs_done = 0
            if name not in self.jobs:
                self.jobs[name] = self.bar.add_task(f"  {name} (epochs)", total=spec.config["epochs"])
            self.bar.update(self.jobs[name], completed=epochs_done)

    def _lines(self, running, done: int, total: int) -> None:
        """One plain line per run that left the running set: finished with its evidence, or failed with its log."""
        from mmtm.analysis.sweep import is_done

        now, names = self.clock(), {s.name for s in running}
        for name in list(self.running):
            if name not in names:
                spec, since = self.running.pop(name)
                state = "done" if is_done(spec) else "failed (its job.log says why)"
                print(f"[{done}/{total}] {name} {state} after {now - since:.0f} s", flush=True)
        for spec in running:
            self.running.setdefault(spec.name, (spec, now))

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
