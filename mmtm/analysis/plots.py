"""Matplotlib figures of runs (from their evidence, mmtm/analysis/evidence.py): d_speed over steps and over regular
steps, s(·|·), accuracies per head, u(·|·) per run and per policy, d_speed against d_util, and d_util and d_speed per
pair of views.

Made for a paper: at most 7 in wide (two columns; 3.5 in for one), text of 8 pt or more, every axis labelled with
its unit, intervals drawn where the data has them (95%: a run's bootstrap over its test objects, a policy's t-interval
over seeds), one colour scale per measure. Each figure is written as PNG and as PDF (vector) beside it, each
atomically (loaders/atomic.py): a full disk or a kill leaves the previous figure, never half of one.
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmtm.loaders.atomic import atomic_write_bytes  # noqa: E402
from mmtm.analysis import stats  # noqa: E402

REBALANCE_COLORS = {"rebalance_m0": "tab:red", "rebalance_m1": "tab:blue"}
MAX_WIDTH_IN = 7.0   # a two-column figure; one column is 3.5 in
MIN_FONT_PT = 8
DPI = 200
STYLE = {"font.size": MIN_FONT_PT, "axes.titlesize": 9, "axes.labelsize": MIN_FONT_PT,
         "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT, "legend.fontsize": MIN_FONT_PT,
         "figure.titlesize": 9, "pdf.fonttype": 42}  # TrueType in the PDF: text stays text, editable
D_SPEED = "d_speed (log10)"  # s(·|·) are log10 ratios of summed μ, d_speed their difference
U_LABEL = "u (relative accuracy gain)"


def styled(plot):
    """Run a plot function under the paper style (not the caller's rcParams, nor changing them)."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return plot(*args, **kwargs)
    return wrapper


def _column(rows: list[dict], key: str, cast=float) -> np.ndarray:
    return np.array([cast(r[key]) for r in rows])


def _save(fig, path: Path) -> Path:
    """`path` (PNG) and the same figure as PDF beside it, each written to a temporary and renamed into place."""
    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    # No creation date: the same figure gives the same bytes, so a rebuilt figure shows no change.
    atomic_write_bytes(path.with_suffix(".pdf"), lambda f: fig.savefig(f, format="pdf",
                                                                       metadata={"CreationDate": None}))
    plt.close(fig)
    return path


def _trace(run: dict, key: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in run["summary"]["trace"][key]], dtype=float)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, **kwargs)


@styled
def plot_d_speed(runs: list[dict], path: Path) -> Path:
    """d_speed over steps, one panel per run (from its summary's trace, every few steps): the cumulative view
    (black) and the windowed one (grey); under each panel a strip with one row per re-balancing kind, marked where
    an interval of the trace held such steps, so neither kind hides the other."""
    fig = plt.figure(figsize=(MAX_WIDTH_IN, 1.9 * len(runs) + 0.4), layout="constrained")
    grid = fig.add_gridspec(2 * len(runs), 1, height_ratios=[4, 1] * len(runs))
    top = None
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[2 * i], sharex=top)
        strip = fig.add_subplot(grid[2 * i + 1], sharex=ax)
        top = top or ax
        x, d = _trace(run, "step"), _trace(run, "d_speed")
        ax.plot(x, _trace(run, "d_speed_window"), lw=0.8, color="grey", label="windowed")
        ax.plot(x, d, lw=1.2, color="black", label="cumulative")
        alpha = run["config"].get("alpha")
        if run["config"].get("policy") in ("balanced", "flipped") and alpha is not None:
            ax.axhspan(-alpha, alpha, color="grey", alpha=0.2, lw=0, label="±α")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel(D_SPEED)
        ax.set_title(run["name"])
        ax.tick_params(labelbottom=False)
        for row, (mode, color) in enumerate(REBALANCE_COLORS.items()):
            sel = _trace(run, mode) > 0
            strip.scatter(x[sel], np.full(sel.sum(), row), marker="|", s=40, color=color,
                          label=f"re-balance {mode[-2:]}")
        strip.set_yticks([0, 1], ["m0", "m1"])
        strip.set_ylim(-0.7, 1.7)
        strip.set_ylabel("re-bal.", rotation=0, ha="right", va="center")
        strip.tick_params(labelbottom=i == len(runs) - 1)
    strip.set_xlabel("training step")
    _figure_legend(fig)
    return _save(fig, path)


def _figure_legend(fig, where: str = "outside upper center", columns: int | None = None) -> None:
    """One legend outside the panels for every label any of them draws (none covers a curve)."""
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc=where, ncol=columns or len(handles), frameon=False)


@styled
def plot_d_speed_by_regular_steps(runs: list[dict], path: Path) -> Path:
    """Cumulative d_speed against the number of regular steps it rests on, every run on one axis: at equal x the
    runs are compared on equal evidence."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 3.2), layout="constrained")
    for i, run in enumerate(runs):
        d = np.array([np.nan if v is None else v for v in run["summary"]["d_speed_by_regular_step"]], dtype=float)
        ax.plot(np.arange(1, len(d) + 1), d, lw=1, color=f"C{i % 10}", label=run["name"])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("regular steps so far")
    ax.set_ylabel(f"cumulative {D_SPEED}")
    _figure_legend(fig, where="outside lower center", columns=4)
    return _save(fig, path)


@styled
def plot_speeds(runs: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 3.4), layout="constrained")
    for i, run in enumerate(runs):
        x = _trace(run, "step")
        color = f"C{i % 10}"
        ax.plot(x, _trace(run, "s_m1_m0"), color=color, lw=1, label=f"{run['name']}: s(m1|m0)")
        ax.plot(x, _trace(run, "s_m0_m1"), color=color, lw=1, ls="--", label=f"{run['name']}: s(m0|m1)")
    ax.set_xlabel("training step")
    ax.set_ylabel("conditional learning speed (log10)")
    _figure_legend(fig, where="outside lower center", columns=4)
    return _save(fig, path)


@styled
def plot_accuracy(runs: list[dict], path: Path) -> Path:
    """Train and validation accuracy (ŷ and each head) per epoch, one panel per run, three panels a row."""
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH_IN, 2.1 * rows + 0.5), sharey=True, squeeze=False)
    for ax, run in zip(axes.flat, runs):
        ep = run["epochs"]
        x = _column(ep, "epoch", int) + 1
        view = [f" (view {v})" for v in run["config"]["views"]] if "views" in run["config"] else ["", ""]
        for key, style, label in (("train_acc", "k-", "train"), ("val_acc", "g-", "val ŷ"),
                                  ("val_acc_m0", "r--", f"val m0{view[0]}"), ("val_acc_m1", "b--", f"val m1{view[1]}")):
            ax.plot(x, _column(ep, key), style, lw=1.2, label=label)
        ax.set_title(run["name"])
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (fraction)")
    _legend(axes[0, 0], loc="lower right")
    return _save(fig, path)


def _interval_errors(means: list[float], intervals: list) -> np.ndarray:
    """Matplotlib's [2, n] error lengths below and above each mean; 0 where there is no interval."""
    lo = [m - iv[0] if iv else 0.0 for m, iv in zip(means, intervals)]
    hi = [iv[1] - m if iv else 0.0 for m, iv in zip(means, intervals)]
    return np.nan_to_num(np.array([lo, hi]))


@styled
def plot_cur(runs: list[dict], path: Path) -> Path:
    """u(m1|m0) and u(m0|m1) per run with their 95% bootstrap intervals over the test objects (cur.json's
    `intervals`); runs without cur.json are left out."""
    runs = [r for r in runs if r.get("cur")]
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH_IN, max(3.5, 0.8 * len(runs) + 1.5)), 3))
    x = np.arange(len(runs))
    for offset, key, label, color in ((-0.2, "u_m1_given_m0", "u(m1|m0)", "tab:red"),
                                      (0.2, "u_m0_given_m1", "u(m0|m1)", "tab:blue")):
        means = [r["cur"][key] for r in runs]
        errors = _interval_errors(means, [r["cur"].get("intervals", {}).get(key) for r in runs])
        ax.bar(x + offset, means, 0.4, yerr=errors, capsize=2, label=label, color=color,
               error_kw={"lw": 0.8})
    return _save_u_bars(fig, ax, x, [r["name"] for r in runs], "u per run, 95% bootstrap CI", path)


@styled
def plot_cur_by_policy(rows: list[dict], path: Path) -> Path:
    """Mean u(m1|m0) and u(m0|m1) per policy over seeds with their 95% t-interval, the seeds as dots (rows from
    `summary_rows`)."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH_IN, max(3.5, 0.8 * len(policies) + 1.5)), 3))
    for offset, key, label, color in ((-0.2, "u_m1_given_m0", "u(m1|m0)", "tab:red"),
                                      (0.2, "u_m0_given_m1", "u(m0|m1)", "tab:blue")):
        values = [[r[key] for r in rows if r["policy"] == p and not np.isnan(r[key])] for p in policies]
        means = [float(np.mean(v)) if v else np.nan for v in values]
        x = np.arange(len(policies)) + offset
        ax.bar(x, means, 0.4, yerr=_interval_errors(means, [stats.t_interval(v) for v in values]), capsize=2,
               label=label, color=color, alpha=0.6, error_kw={"lw": 0.8})
        for xi, v in zip(x, values):
            ax.scatter(np.full(len(v), xi), v, s=8, color="black", zorder=3)
    return _save_u_bars(fig, ax, np.arange(len(policies)), policies, "u per policy: mean, 95% t-CI, seeds", path)


def _save_u_bars(fig, ax, ticks, labels: list[str], title: str, path: Path) -> Path:
    """The axes every bar chart of u(·|·) shares (a zero line, slanted labels, the legend), then saved."""
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_ylabel(U_LABEL)
    ax.set_title(title)
    _legend(ax)
    return _save(fig, path)


@styled
def plot_speed_vs_util(rows: list[dict], path: Path) -> Path:
    """Does the proxy predict the outcome? d_util (best.pt, with its 95% bootstrap interval over test objects)
    against the final and the stage-matched d_speed, one dot per run, one colour per policy (rows from
    `mmtm.analysis.report.summary_rows`; single-view runs left out)."""
    rows = [r for r in rows if not r["policy"].startswith("single-view")]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(MAX_WIDTH_IN, 3), sharey=True)
    for ax, key, label in ((axes[0], "d_speed_final", f"final {D_SPEED}"),
                           (axes[1], "d_speed_stage", f"{D_SPEED} at half of training")):
        for i, policy in enumerate(policies):
            sel = [r for r in rows if r["policy"] == policy]
            means = [r["d_util"] for r in sel]
            ax.errorbar([r[key] for r in sel], means, yerr=_interval_errors(means, [r.get("d_util_ci") for r in sel]),
                        fmt="o", ms=3.5, lw=0.8, color=f"C{i % 10}", label=policy)
        ax.set_xlabel(label)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("d_util (best.pt)")
    _legend(axes[0])
    return _save(fig, path)


@styled
def plot_view_pairs(table: list[dict], path: Path) -> Path:
    """Mean d_util and mean final d_speed per pair of views (rows: first view, columns: second), one row of panels
    per policy; each cell says mean ± the t-interval's half-width over seeds. One colour scale per measure, shared
    by every policy's panel, so a colour means the same number across policies. `table` rows: {policy, views:
    [a, b], d_util: (mean, half), d_speed_final: (mean, half)}."""
    policies = list(dict.fromkeys(r["policy"] for r in table))
    firsts, seconds = sorted({r["views"][0] for r in table}), sorted({r["views"][1] for r in table})
    row, col = {v: i for i, v in enumerate(firsts)}, {v: i for i, v in enumerate(seconds)}
    measures = (("d_util", "d_util"), ("d_speed_final", f"final {D_SPEED}"))
    fig, axes = plt.subplots(len(policies), 2, figsize=(MAX_WIDTH_IN, (0.45 * len(firsts) + 0.9) * len(policies)
                                                        + 0.9), squeeze=False, layout="constrained")
    for j, (key, title) in enumerate(measures):
        values = np.array([r[key][0] for r in table], dtype=float)
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        for ax, policy in zip(axes[:, j], policies):
            grid = np.full((len(firsts), len(seconds)), np.nan)
            for r in table:
                if r["policy"] == policy:
                    a, b = r["views"]
                    grid[row[a], col[b]] = r[key][0]
                    half = r[key][1]
                    ax.text(col[b], row[a], f"{r[key][0]:+.2f}\n±{half:.2f}" if half == half else
                            f"{r[key][0]:+.2f}", ha="center", va="center", fontsize=MIN_FONT_PT)
            image = ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
            ax.set_xticks(range(len(seconds)), [f"v{v}" for v in seconds])
            ax.set_yticks(range(len(firsts)), [f"v{v}" for v in firsts])
            ax.set_xlabel("second view (m1)")
            ax.set_ylabel("first view (m0)")
            ax.set_title(f"{policy}: {title}")
        fig.colorbar(image, ax=list(axes[:, j]), orientation="horizontal", location="bottom", shrink=0.8,
                     label=f"{title}, mean over seeds")
    return _save(fig, path)
