"""Figures of simulated episodes (matplotlib, Agg backend; PNGs for run directories)."""

from __future__ import annotations

import os

import numpy as np

from ._io import atomic_open

__all__ = ["plot_episode", "plot_a_vs_Z", "plot_error_vs_m", "plot_head_grid"]

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


def _save(fig, path) -> str:
    plt = _pyplot()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=130)
    plt.close(fig)
    return os.fspath(path)


def plot_a_vs_Z(Z, curves: dict, path, *, title: str = "") -> str:
    """The paper's figure: astrocyte response ``a_t`` for several ``m`` (``curves``:
    ``{m: a}``) against the teacher's softmax normaliser ``Z_t``, over token position."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    t = np.arange(len(Z))
    for (m, a), col in zip(sorted(curves.items()), ("tab:orange", "tab:blue", "tab:green", "tab:red")):
        ax.plot(t, a, color=col, lw=1.2, alpha=0.9, label=f"astrocyte response $a_t$, m = {m:,}")
    ax.plot(t, Z, color="k", lw=1.6, ls="--", label="softmax normaliser $Z_t$ (teacher)")
    ax.set_xlabel("token position t")
    ax.set_ylabel("normaliser")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_error_vs_m(summary: list[dict], path, *, title: str = "") -> str:
    """Error-versus-m curves: median over heads (line) and interquartile range (band) of
    the read-out and astrocyte errors (log-log) and of r(a, Z), per feature map; simulated
    solid, closed form dotted."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    fmaps = list(dict.fromkeys(s["feature_map"] for s in summary))
    panels = (("y_rel_err", "median rel. error of $y$", True), ("a_rel_err", "median rel. error of $a$", True),
              ("r_aZ", "Pearson r(a, Z)", False))
    for ax, (key, label, logy) in zip(axes, panels):
        for fm, col in zip(fmaps, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            rows = sorted((s for s in summary if s["feature_map"] == fm), key=lambda s: s["m"])
            ms = np.array([s["m"] for s in rows], float)
            for group, ls, lab in (("simulated", "-", fm), ("closed_form", ":", None)):
                st = [s[group][key] for s in rows]
                med = np.array([np.nan if x["median"] is None else x["median"] for x in st])
                lo = np.array([np.nan if x["q25"] is None else x["q25"] for x in st])
                hi = np.array([np.nan if x["q75"] is None else x["q75"] for x in st])
                ax.plot(ms, med, ls, color=col, marker="o", ms=3, label=lab)
                if group == "simulated":
                    ax.fill_between(ms, lo, hi, color=col, alpha=0.18, lw=0)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("hidden neurons per head, m")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, title="simulated (band: IQR over heads);\ndotted: closed form", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_head_grid(values, path, *, title: str = "", label: str = "median rel. error of y") -> str:
    """A layers x heads heat map (log colour scale)."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    values = np.asarray(values, float)
    L, H = values.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * H + 2), max(2.5, 0.45 * L + 1.2)))
    finite = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
    im = ax.imshow(values, norm=norm, cmap="viridis", aspect="auto")
    for i in range(L):
        for j in range(H):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    return _save(fig, path)
