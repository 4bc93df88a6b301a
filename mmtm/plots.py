"""Matplotlib figures of runs (from their evidence, mmtm/evidence.py): d_speed over steps and over regular steps,
s(·|·), accuracies per head, u(·|·) per run and per policy, d_speed against d_util, and d_util and d_speed per pair
of views."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REBALANCE_COLORS = {"rebalance_m0": "tab:red", "rebalance_m1": "tab:blue"}


def _column(rows: list[dict], key: str, cast=float) -> np.ndarray:
    return np.array([cast(r[key]) for r in rows])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _trace(run: dict, key: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in run["summary"]["trace"][key]], dtype=float)


def plot_d_speed(runs: list[dict], path: Path) -> Path:
    """d_speed over steps, one panel per run (from its summary's trace, every few steps): the cumulative view
    (black) and the windowed one (grey); re-balancing marked where an interval of the trace held such steps."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        x, d = _trace(run, "step"), _trace(run, "d_speed")
        ax.plot(x, _trace(run, "d_speed_window"), lw=0.8, color="grey", label="windowed")
        ax.plot(x, d, lw=1, color="black", label="cumulative")
        for mode, color in REBALANCE_COLORS.items():
            sel = _trace(run, mode) > 0
            if sel.any():
                ax.scatter(x[sel], d[sel], s=6, color=color, label=mode.replace("_", " "), zorder=3)
        alpha = run["config"].get("alpha")
        if run["config"].get("policy") in ("balanced", "flipped") and alpha is not None:
            ax.axhspan(-alpha, alpha, color="grey", alpha=0.2, lw=0, label="±α")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("d_speed (d_CLS)")
        ax.set_title(run["name"], fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    return _save(fig, path)


def plot_d_speed_by_regular_steps(runs: list[dict], path: Path) -> Path:
    """Cumulative d_speed against the number of regular steps it rests on, every run on one axis: at equal x the
    runs are compared on equal evidence."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, run in enumerate(runs):
        d = np.array([np.nan if v is None else v for v in run["summary"]["d_speed_by_regular_step"]], dtype=float)
        ax.plot(np.arange(1, len(d) + 1), d, lw=1, color=f"C{i % 10}", label=run["name"])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("regular steps so far")
    ax.set_ylabel("cumulative d_speed (d_CLS)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_speeds(runs: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, run in enumerate(runs):
        x = _trace(run, "step")
        color = f"C{i % 10}"
        ax.plot(x, _trace(run, "s_m1_m0"), color=color, lw=1, label=f"{run['name']}: s(m1|m0)")
        ax.plot(x, _trace(run, "s_m0_m1"), color=color, lw=1, ls="--", label=f"{run['name']}: s(m0|m1)")
    ax.set_xlabel("step")
    ax.set_ylabel("conditional learning speed (log10)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy(runs: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        ep = run["epochs"]
        x = _column(ep, "epoch", int)
        for key, style in (("train_acc", "k-"), ("val_acc", "g-"), ("val_acc_m0", "r--"), ("val_acc_m1", "b--")):
            ax.plot(x, _column(ep, key), style, lw=1.2, label=key)
        ax.set_title(run["name"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def plot_cur(runs: list[dict], path: Path) -> Path:
    """u(m1|m0) and u(m0|m1) per run (runs without cur.json are left out)."""
    runs = [r for r in runs if r.get("cur")]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(runs) + 2), 3.6))
    x = np.arange(len(runs))
    ax.bar(x - 0.2, [r["cur"]["u_m1_given_m0"] for r in runs], 0.4, label="u(m1|m0)", color="tab:red")
    ax.bar(x + 0.2, [r["cur"]["u_m0_given_m1"] for r in runs], 0.4, label="u(m0|m1)", color="tab:blue")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, [r["name"] for r in runs], rotation=20, fontsize=8)
    ax.set_ylabel("conditional utilisation rate")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_cur_by_policy(rows: list[dict], path: Path) -> Path:
    """Mean u(m1|m0) and u(m0|m1) per policy over seeds, with the seeds as dots (rows from `summary_rows`)."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(policies) + 2), 3.6))
    for offset, key, label, color in ((-0.2, "u_m1_given_m0", "u(m1|m0)", "tab:red"),
                                      (0.2, "u_m0_given_m1", "u(m0|m1)", "tab:blue")):
        values = [[r[key] for r in rows if r["policy"] == p] for p in policies]
        x = np.arange(len(policies)) + offset
        ax.bar(x, [np.mean(v) for v in values], 0.4, label=label, color=color, alpha=0.6)
        for xi, v in zip(x, values):
            ax.scatter(np.full(len(v), xi), v, s=8, color="black", zorder=3)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(np.arange(len(policies)), policies, rotation=20, fontsize=8)
    ax.set_ylabel("conditional utilisation rate")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_speed_vs_util(rows: list[dict], path: Path) -> Path:
    """Does the proxy predict the outcome? d_util (best.pt) against the final and the stage-matched d_speed, one
    dot per run, one colour per policy (rows from `mmtm.report.summary_rows`; single-view runs left out)."""
    rows = [r for r in rows if not r["policy"].startswith("single-view")]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "d_speed_final", "final d_speed"), (axes[1], "d_speed_stage",
                                                                         "d_speed at half of training")):
        for i, policy in enumerate(policies):
            sel = [r for r in rows if r["policy"] == policy]
            ax.scatter([r[key] for r in sel], [r["d_util"] for r in sel], s=14, color=f"C{i % 10}", label=policy)
        ax.set_xlabel(label)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("d_util (best.pt)")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_view_pairs(table: list[dict], path: Path) -> Path:
    """Mean d_util and mean final d_speed per pair of views (rows: first view, columns: second), one row of panels
    per policy; each cell says mean ± the t-interval's half-width over seeds. `table` rows: {policy, views: [a, b],
    d_util: (mean, half), d_speed_final: (mean, half)}."""
    policies = list(dict.fromkeys(r["policy"] for r in table))
    firsts, seconds = sorted({r["views"][0] for r in table}), sorted({r["views"][1] for r in table})
    row, col = {v: i for i, v in enumerate(firsts)}, {v: i for i, v in enumerate(seconds)}
    fig, axes = plt.subplots(len(policies), 2, figsize=(2 * (1.1 * len(seconds) + 2), (0.9 * len(firsts) + 1.4)
                                                          * len(policies)), squeeze=False)
    for row_axes, policy in zip(axes, policies):
        for ax, key, title in zip(row_axes, ("d_util", "d_speed_final"), ("d_util", "final d_speed")):
            grid = np.full((len(firsts), len(seconds)), np.nan)
            for r in table:
                if r["policy"] == policy:
                    a, b = r["views"]
                    grid[row[a], col[b]] = r[key][0]
                    half = r[key][1]
                    ax.text(col[b], row[a], f"{r[key][0]:+.2f}\n±{half:.2f}" if half == half else
                            f"{r[key][0]:+.2f}", ha="center", va="center", fontsize=7)
            bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
            im = ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound)
            ax.set_xticks(range(len(seconds)), [f"v{v}" for v in seconds])
            ax.set_yticks(range(len(firsts)), [f"v{v}" for v in firsts])
            ax.set_xlabel("second view (m1)")
            ax.set_ylabel("first view (m0)")
            ax.set_title(f"{policy}: {title}", fontsize=10)
            fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)
