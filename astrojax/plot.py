"""Figures of simulated episodes (matplotlib, Agg backend; PNGs for run directories)."""

from __future__ import annotations

import os

import numpy as np

from ._io import atomic_open

__all__ = ["plot_episode"]

_SIM_COLORS = ("tab:blue", "tab:orange", "tab:green")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; safe to call repeatedly
    import matplotlib.pyplot as plt

    return plt


def _read_spans(protocol, T: int):
    """Merged ``[start, end)`` time intervals (window units) of the read windows."""
    if protocol is None:
        return []
    from .protocol import as_protocol

    read = np.sort(as_protocol(protocol).schedule(T).read_idx)
    spans = []
    for j in read:
        if spans and spans[-1][1] == j:
            spans[-1][1] = j + 1
        else:
            spans.append([j, j + 1])
    return spans


def _rel(x, ref):
    d = np.max(np.abs(ref))
    return float(np.max(np.abs(x - ref)) / d) if d > 0 else float("nan")


def plot_episode(trace, y, a, y_ref, a_ref, path, title=None, *, protocol=None, max_dims: int = 3):
    """Plot one simulated episode against the closed form and save it as a PNG.

    Panels: mean hidden rate, total process calcium, raw astrocyte response ``a`` and
    output rates (first ``max_dims`` dims) over time; the read-out ``y`` at the end of
    each read window against ``y_ref``, and the normalised ``a_t`` against ``a_ref``,
    per token.

    Args:
        trace: :class:`astrojax.integrate.Trace` (or anything with numpy-convertible
            ``t, h_mean, p_sum, a, y``), ``t`` in window units.
        y, y_ref: ``(T, Dv)`` simulated read-out and closed form.
        a, a_ref: ``(T,)`` normalised astrocyte response and closed form.
        path: output PNG path (written atomically).
        title: optional figure title.
        protocol: ``"bidirectional"``, ``"causal"`` or a
            :class:`~astrojax.protocol.Protocol`; if given, read windows are shaded.
        max_dims: number of output dimensions drawn.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    t = np.asarray(trace.t, np.float64)
    h_mean = np.asarray(trace.h_mean, np.float64)
    p_sum = np.asarray(trace.p_sum, np.float64)
    a_tr = np.asarray(trace.a, np.float64)
    y_tr = np.asarray(trace.y, np.float64)
    y, y_ref = np.asarray(y, np.float64), np.asarray(y_ref, np.float64)
    a, a_ref = np.asarray(a, np.float64), np.asarray(a_ref, np.float64)
    if y.shape != y_ref.shape or y.ndim != 2:
        raise ValueError(f"`y` and `y_ref` must have the same shape (T, Dv), got {y.shape} and {y_ref.shape}")
    if a.shape != a_ref.shape or a.shape != (y.shape[0],):
        raise ValueError(f"`a` and `a_ref` must have shape (T,)=({y.shape[0]},), got {a.shape} and {a_ref.shape}")
    T, Dv = y.shape
    nd = min(max_dims, Dv)
    # few samples (fast path: one per window end) -> show the samples as dots
    style = dict(marker=".", markersize=4) if len(t) <= 200 else {}
    spans = _read_spans(protocol, T)

    fig, axes = plt.subplots(3, 2, figsize=(11, 10), constrained_layout=True)
    ax_h, ax_p, ax_a, ax_yt, ax_y, ax_an = axes.ravel()

    def shade(ax):
        for k, (s, e) in enumerate(spans):
            ax.axvspan(s, e, color="0.92", zorder=0, label="read windows" if k == 0 else None)

    for ax in (ax_h, ax_p, ax_a, ax_yt):
        shade(ax)
        ax.set_xlabel("time (windows)")
        ax.set_xlim(0, max(float(t.max()) if t.size else 1.0, 2 * T))
        ax.grid(alpha=0.3)

    ax_h.plot(t, h_mean, color="tab:purple", **style)
    ax_h.set_ylabel("mean hidden rate")
    ax_h.set_title("hidden neurons")
    if spans:
        ax_h.legend(loc="best", fontsize=8)

    ax_p.plot(t, p_sum, color="tab:brown", **style)
    ax_p.set_ylabel("total process calcium (sum of p)")
    ax_p.set_title("astrocyte processes")

    ax_a.plot(t, a_tr, color="tab:red", **style)
    ax_a.set_ylabel("astrocyte response a (raw)")
    ax_a.set_title("astrocyte response")

    for d in range(nd):
        ax_yt.plot(t, y_tr[:, d], color=_SIM_COLORS[d], label=f"y[{d}]", **style)
    ax_yt.set_ylabel("output rate")
    ax_yt.set_title(f"output neurons (first {nd} of {Dv})")
    ax_yt.legend(loc="best", fontsize=8)

    tok = np.arange(T)
    for d in range(nd):
        c = _SIM_COLORS[d]
        ax_y.plot(tok, y_ref[:, d], "-", color=c, alpha=0.6, lw=1.5, label=f"y[{d}]")
        ax_y.plot(tok, y[:, d], "o", color=c, mfc="none", ms=7, mew=1.5)
    # style key: lines = closed form, circles = simulated (colours = output dims)
    ax_y.plot([], [], "-", color="0.3", label="closed form")
    ax_y.plot([], [], "o", color="0.3", mfc="none", mew=1.5, label="simulated")
    ax_y.set_xlabel("token index")
    ax_y.set_ylabel("read-out y")
    ax_y.set_title(f"read-out at read-window ends vs closed form (rel. err {_rel(y, y_ref):.1e})", fontsize=10)
    ax_y.legend(loc="best", fontsize=8, ncol=2)
    ax_y.grid(alpha=0.3)

    ax_an.plot(tok, a_ref, "-", color="k", alpha=0.6, lw=1.5, label=r"closed form $\phi(\tilde q_t)\cdot\sum\phi(\tilde k_\tau)$")
    ax_an.plot(tok, a, "o", color="tab:red", mfc="none", ms=7, mew=1.5, label="simulated (normalised)")
    ax_an.set_xlabel("token index")
    ax_an.set_ylabel("normalised astrocyte response $a_t$")
    ax_an.set_title(f"astrocyte response vs closed form (rel. err {_rel(a, a_ref):.1e})", fontsize=10)
    ax_an.legend(loc="best", fontsize=8)
    ax_an.grid(alpha=0.3)
    for ax in (ax_y, ax_an):
        ax.set_xticks(tok if T <= 20 else np.linspace(0, T - 1, 11).round().astype(int))

    if title:
        fig.suptitle(title)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return os.fspath(path)
