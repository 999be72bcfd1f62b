"""Figures of recordings and fits (matplotlib Agg; PNGs written atomically)."""

from __future__ import annotations

import numpy as np

from .._io import atomic_open
from ..plot import _pyplot
from .recording import Recording

__all__ = ["plot_fit_variable", "plot_history", "plot_recording"]

_LABELS = {"a": "astrocyte response a", "p": "process calcium p", "h": "hidden rates h", "y": "output rates y"}


def _shade_reads(ax, rec: Recording):
    from ..protocol import Protocol

    sched = Protocol(rec.protocol, rec.write_delay).schedule(rec.T)
    for j in np.where(sched.read)[0]:
        ax.axvspan(rec.t_start + j * rec.window, rec.t_start + (j + 1) * rec.window, color="0.93", lw=0, zorder=0)


def _save(fig, path):
    plt = _pyplot()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return str(path)


def plot_fit_variable(rec: Recording, x: str, model, path, *, max_channels: int = 6, title: str | None = None):
    """Data of observed variable ``x`` (dots; gaps where missing) against the fitted
    model ``(N, c)`` (line) over time, one panel per channel (first ``max_channels``);
    read windows shaded."""
    plt = _pyplot()
    data = rec.channels(x)
    model = np.asarray(model).reshape(data.shape)
    c = min(data.shape[1], max_channels)
    fig, axes = plt.subplots(c, 1, figsize=(8, 1.9 * c + 0.8), sharex=True, squeeze=False)
    for i in range(c):
        ax = axes[i, 0]
        _shade_reads(ax, rec)
        ax.plot(rec.t, data[:, i], ".", ms=3, color="tab:blue", label="data")
        ax.plot(rec.t, model[:, i], "-", lw=1.3, color="tab:red", label="fitted model")
        ax.set_ylabel(f"{x}" if data.shape[1] == 1 else f"{x}[{i}]")
        if i == 0:
            ax.legend(loc="upper left", fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("t (recording units; read windows shaded)")
    more = f" (first {c} of {data.shape[1]} channels)" if data.shape[1] > c else ""
    fig.suptitle(title or f"{_LABELS.get(x, x)}: data vs fit{more}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_history(history, path, *, best: int | None = None):
    """Loss against iteration for every restart (log scale; the best one bold)."""
    plt = _pyplot()
    h = np.asarray(history, np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i in range(h.shape[1]):
        ok = np.isfinite(h[:, i]) & (h[:, i] > 0)
        if ok.any():
            ax.plot(np.arange(1, len(h) + 1)[ok], h[ok, i], lw=2.2 if i == best else 0.9,
                    color="k" if i == best else None, label=f"restart {i}" if h.shape[1] <= 10 else None)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (0.5 * sum of squared weighted residuals)")
    if h.shape[1] <= 10:
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_recording(rec: Recording, path, *, max_channels: int = 3):
    """All observed traces of a recording (one panel per variable)."""
    plt = _pyplot()
    xs = [x for x in ("a", "p", "h", "y") if x in rec.observed]
    fig, axes = plt.subplots(len(xs), 1, figsize=(8, 2.0 * len(xs) + 0.6), sharex=True, squeeze=False)
    for ax, x in zip(axes[:, 0], xs):
        _shade_reads(ax, rec)
        d = rec.channels(x)
        for i in range(min(d.shape[1], max_channels)):
            ax.plot(rec.t, d[:, i], ".-", ms=2.5, lw=0.6, label=f"{x}[{i}]" if d.shape[1] > 1 else x)
        ax.set_ylabel(x)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("t (read windows shaded)")
    fig.suptitle(f"recording {rec.source}: {rec.protocol}, T={rec.T}, window={rec.window:g}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
