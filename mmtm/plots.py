"""Matplotlib figures of runs: d_speed over steps, s(·|·), accuracies per head, u(·|·) bars."""
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


def plot_d_speed(runs: list[dict], path: Path) -> Path:
    """d_speed per step, one panel per run, re-balancing steps marked by which modality they re-balance."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        steps = run["steps"]
        x, d = _column(steps, "step", int), _column(steps, "d_speed")
        ax.plot(x, d, lw=1, color="black", label="d_speed (d_CLS)")
        modes = np.array([r["mode"] for r in steps])
        for mode, color in REBALANCE_COLORS.items():
            sel = modes == mode
            if sel.any():
                ax.scatter(x[sel], d[sel], s=6, color=color, label=mode.replace("_", " "), zorder=3)
        alpha = run["config"].get("alpha")
        if run["config"].get("policy") == "balanced" and alpha is not None:
            ax.axhspan(-alpha, alpha, color="grey", alpha=0.2, lw=0, label="±α")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("d_speed (d_CLS)")
        ax.set_title(run["name"], fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    return _save(fig, path)


def plot_speeds(runs: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, run in enumerate(runs):
        steps = run["steps"]
        x = _column(steps, "step", int)
        color = f"C{i}"
        ax.plot(x, _column(steps, "s_m1_m0"), color=color, lw=1, label=f"{run['name']}: s(m1|m0)")
        ax.plot(x, _column(steps, "s_m0_m1"), color=color, lw=1, ls="--", label=f"{run['name']}: s(m0|m1)")
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
