"""Training figures: learning curves and before/after comparisons (PNG, Agg)."""

from __future__ import annotations

import numpy as np

from ..plot import _pyplot, _save

__all__ = ["plot_learning_curve", "plot_before_after"]


def plot_learning_curve(records: list[dict], path, *, title: str = "") -> str:
    """Total loss and each loss term against the step (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([r["step"] for r in records])
    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")})
    for k in keys:
        vals = np.array([r.get(k, np.nan) for r in records], float)
        ax.plot(steps, vals, lw=2 if k == "loss" else 1, label=k.replace("loss_", "") if k != "loss" else "total")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_before_after(task, student0, student1, before: dict, after: dict, path, c: dict) -> str:
    """Heads scope: a_t vs Z_t of one held-out head before/after, and every head's median
    y error before vs after. Model scope: the summary numbers as bars."""
    plt = _pyplot()
    if task.scope == "heads":
        labels = task.head_labels
        want = (c["plot_layer"], c["plot_head"])
        idx = labels.index(want) if want in labels else 0
        a0, Z = task.curves(student0, idx)
        a1, _ = task.curves(student1, idx)
        fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
        t = np.arange(len(Z))
        axes[0].plot(t, Z, "k--", lw=1.6, label="teacher $Z_t$")
        axes[0].plot(t, a0, color="tab:orange", lw=1, label="astrocyte $a_t$ before (random construction)")
        axes[0].plot(t, a1, color="tab:blue", lw=1.2, label="astrocyte $a_t$ after training")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("held-out token position t")
        axes[0].set_title(f"layer {labels[idx][0]} head {labels[idx][1]}", fontsize=9)
        axes[0].legend(fontsize=8)
        yb = np.array([r["y_rel_err"] or np.nan for r in before["per_head"]])
        ya = np.array([r["y_rel_err"] or np.nan for r in after["per_head"]])
        axes[1].scatter(yb, ya, s=12)
        lim = [min(np.nanmin(yb), np.nanmin(ya)) * 0.8, max(np.nanmax(yb), np.nanmax(ya)) * 1.2]
        axes[1].plot(lim, lim, "k:", lw=1)
        axes[1].axhline(0.1, color="tab:red", lw=0.8, ls="--", label="10 %")
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("median y error before")
        axes[1].set_ylabel("median y error after")
        axes[1].set_title("every head (held-out)", fontsize=9)
        axes[1].legend(fontsize=8)
    else:
        keys = [k for k in after["summary"] if isinstance(after["summary"][k], float) and k in before["summary"]]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(keys)), 3.5))
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [before["summary"][k] for k in keys], 0.4, label="before")
        ax.bar(x + 0.2, [after["summary"][k] for k in keys], 0.4, label="after")
        ax.set_xticks(x)
        ax.set_xticklabels(keys, rotation=20, fontsize=7)
        ax.legend(fontsize=8)
    fig.suptitle(f"{c['name']}: held-out match before and after training", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
