"""``astrojax simulate astrocyte=li_rinzel``: one head whose astrocyte is the Li--Rinzel
calcium model (:mod:`astrojax.astro.network`) on one random episode, against its closed
form in the linear regime (random-feature attention).

Settings: the ``li_rinzel`` section of the simulate config (:class:`LiRinzelSimConfig`,
times in ms) plus the top-level ``seed, T, D, Dv, m, feature_map, input_scale, inputs,
x64, trace``. Outputs in the run directory: ``metrics.json`` (read-out and response
against the closed form, solver steps, the IP3 excursion), ``trace.npz`` and, with
``trace=true``, ``episode.png``: IP3, Ca_astro and h_IP3R of a few processes over the
episode, the read-out at the end of every read window against random-feature attention,
and the normalised response against the RFA normaliser.
"""

from __future__ import annotations

import dataclasses
import os
import time

from .._config import ConfigError, option

__all__ = ["LiRinzelSimConfig", "LiRinzelAstroConfig", "LiRinzelSimulationError", "check_li_rinzel_simulate",
           "run_li_rinzel_simulate"]


class LiRinzelSimulationError(RuntimeError):
    """The calcium solve of the head failed (the simulate job reports it as a failed simulation)."""


@dataclasses.dataclass
class LiRinzelAstroConfig:
    """:class:`~astrojax.astro.LiRinzelParams` of every astrocyte process (NEST's names,
    units -- ms, µM -- and defaults)."""

    Ca_tot: float = option(2.0, gt=0.0, help="total free calcium (uM)")
    IP3_0: float = option(0.16, ge=0.0, help="baseline IP3 (uM)")
    Kd_IP3_1: float = option(0.13, gt=0.0, help="first IP3R dissociation constant of IP3 (uM)")
    Kd_IP3_2: float = option(0.9434, gt=0.0, help="second IP3R dissociation constant of IP3 (uM)")
    Kd_act: float = option(0.08234, gt=0.0, help="IP3R activation by calcium (uM)")
    Kd_inh: float = option(1.049, ge=0.0, help="IP3R inhibition by calcium (uM)")
    Km_SERCA: float = option(0.1, gt=0.0, help="SERCA half-activation (uM)")
    SIC_scale: float = option(1.0, gt=0.0, help="SIC scale (not used by the head)")
    SIC_th: float = option(0.19669, ge=0.0, help="SIC threshold (uM; not used by the head)")
    delta_IP3: float = option(0.0002, ge=0.0, help="IP3 per unit synaptic weight (uM)")
    k_IP3R: float = option(0.0002, ge=0.0, help="IP3R calcium-inhibition binding rate (1/(uM ms))")
    rate_IP3R: float = option(0.006, ge=0.0, help="maximal IP3R release rate (1/ms)")
    rate_L: float = option(0.00011, ge=0.0, help="ER leak rate (1/ms)")
    rate_SERCA: float = option(0.0009, ge=0.0, help="maximal SERCA uptake (uM/ms)")
    ratio_ER_cyt: float = option(0.185, gt=0.0, help="ER / cytosol volume ratio")
    tau_IP3: float = option(7142.0, gt=0.0, help="IP3 decay time constant (ms)")


SOLVERS = ("kvaerno5", "kvaerno3", "tsit5")


@dataclasses.dataclass
class LiRinzelSimConfig:
    """The head with Li--Rinzel astrocyte processes (``astrocyte=li_rinzel``; times in ms)."""

    window: float = option(1000.0, gt=0.0, help="token window (ms)")
    tau_h: float = option(10.0, gt=0.0, help="hidden-neuron time constant (ms)")
    tau_y: float = option(20.0, gt=0.0, help="output-neuron time constant (ms)")
    nu: float = option(0.002, gt=0.0, help="synaptic IP3 drive per unit hidden rate (weight/ms)")
    eta: float = option(1.0, gt=0.0, help="output gain")
    astro: LiRinzelAstroConfig = option(factory=LiRinzelAstroConfig, help="Li-Rinzel parameters")
    solver: str = option("kvaerno5", choices=SOLVERS, help="calcium solver (implicit Kvaerno for stiff settings)")
    rtol: float = option(1e-7, gt=0.0, help="calcium solver relative tolerance")
    atol: float = option(1e-10, gt=0.0, help="calcium solver absolute tolerance")
    max_steps: int = option(16384, ge=1, help="calcium solver step limit per process")
    n_mesh: int = option(16, ge=1, help="sub-intervals per read window for the shunted outputs")
    processes_plotted: int = option(4, ge=1, help="processes drawn in episode.png")


def check_li_rinzel_simulate(c) -> None:
    """Cross-checks of a simulate config with ``astrocyte=li_rinzel`` (ConfigError naming the key)."""
    if c.protocol != "bidirectional":
        raise ConfigError(f"config key `protocol`: astrocyte=li_rinzel runs the bidirectional protocol only, "
                          f"got {c.protocol!r}")
    from ..features import FEATURE_MAPS, make_feature_map

    import jax

    fm = make_feature_map(c.feature_map, jax.random.PRNGKey(0), 2, 2)
    if not fm.positive:
        positive = [n for n in FEATURE_MAPS if make_feature_map(n, jax.random.PRNGKey(0), 2, 2).positive]
        raise ConfigError(f"config key `feature_map`: astrocyte=li_rinzel needs a positive feature map (hidden rates "
                          f"drive IP3 production); expected one of {positive}, got {c.feature_map!r}")


def run_li_rinzel_simulate(c, out_dir: str) -> dict:
    """The simulate job for ``astrocyte=li_rinzel``; returns the metrics."""
    check_li_rinzel_simulate(c)
    import jax

    if c.x64:
        jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import astrojax

    from .._io import load_inputs, save_json, save_npz
    from .li_rinzel import LiRinzelParams
    from .network import LiRinzelHead, LiRinzelHeadParams, LiRinzelMethod

    s = c.li_rinzel
    dtype = jnp.float64 if c.x64 else jnp.float32
    T, D, Dv, m = c.T, c.D, c.Dv, c.m
    kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(c.seed), 4)
    q = c.input_scale * jax.random.normal(kq, (T, D), dtype)
    k = c.input_scale * jax.random.normal(kk, (T, D), dtype)
    v = c.input_scale * jax.random.normal(kv, (T, Dv), dtype)
    fmap = astrojax.make_feature_map(c.feature_map, kw, m, D, dtype=dtype)
    if c.inputs is not None:
        from hydra.utils import to_absolute_path

        inp = load_inputs(to_absolute_path(c.inputs))
        q, k, v = (jnp.asarray(inp[n], dtype) for n in ("q", "k", "v"))
        (T, D), Dv = q.shape, v.shape[1]
        if "W" in inp:
            fmap = eqx.tree_at(lambda f: f.W, astrojax.make_feature_map(c.feature_map, kw, inp["W"].shape[0], D,
                                                                       dtype=dtype), jnp.asarray(inp["W"], dtype))
        m = fmap.num_features
    astro = LiRinzelParams(**dataclasses.asdict(s.astro), dtype=dtype)
    params = LiRinzelHeadParams(astro=astro, tau_h=s.tau_h, tau_y=s.tau_y, nu=s.nu, eta=s.eta, window=s.window,
                                dtype=dtype)
    solver = {"kvaerno5": dfx.Kvaerno5, "kvaerno3": dfx.Kvaerno3, "tsit5": dfx.Tsit5}[s.solver]()
    method = LiRinzelMethod(solver=solver, rtol=s.rtol, atol=s.atol, max_steps=s.max_steps, n_mesh=s.n_mesh)
    head = LiRinzelHead(fmap, params, method)
    n_t = 40 * 2 * T
    ts = jnp.linspace(0.0, 2 * T * s.window, n_t, dtype=dtype) if c.trace else None

    t0 = time.perf_counter()
    run = eqx.filter_jit(lambda head, q, k, v: head.solve(q, k, v, ts)).lower(head, q, k, v).compile()
    t1 = time.perf_counter()
    sol = jax.block_until_ready(run(head, q, k, v))
    t2 = time.perf_counter()

    lk, lq = head.drives(q, k)
    y_ref, a_ref = eqx.filter_jit(astrojax.random_feature_attention)(q, k, v, fmap, causal=False)
    y_ref = s.eta * np.asarray(y_ref, np.float64)
    y = np.asarray(sol.y, np.float64)
    a = np.exp(np.asarray(sol.log_a, np.float64))
    a_ref = np.asarray(a_ref, np.float64)
    tok = np.linalg.norm(y - y_ref, axis=1) / np.linalg.norm(y_ref, axis=1)
    finite = bool(np.all(np.isfinite(y)) and np.all(np.isfinite(a)))
    metrics = {
        "astrocyte": "li_rinzel",
        "y_rel_error": float(np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ref))),
        "y_rel_error_token_median": float(np.median(tok)),
        "y_rel_error_token_max": float(np.max(tok)),
        "a_rel_error": float(np.max(np.abs(a - a_ref) / a_ref)),
        "a_rel_error_median": float(np.median(np.abs(a - a_ref) / a_ref)),
        "reference": "random_feature_attention (the linear-regime limit; docs/li_rinzel.md)",
        "chi_dCa_dIP3": float(sol.chi),
        "solver_ok": bool(sol.ok),
        "num_steps_max_process": int(sol.num_steps),
        "finite": finite,
        "compile_time_s": t1 - t0,
        "run_time_s": t2 - t1,
        "sizes": {"T": int(T), "D": int(D), "Dv": int(Dv), "m": int(m)},
        "window_ms": s.window,
        "dtype": str(np.dtype(dtype)),
    }
    arrays = dict(y=y, a=a, y_ref=y_ref, a_ref=a_ref, q=np.asarray(q), k=np.asarray(k), v=np.asarray(v))
    if hasattr(fmap, "W"):
        arrays["W"] = np.asarray(fmap.W)
    os.makedirs(out_dir, exist_ok=True)
    if ts is not None:
        ip3, ca, hr = (np.asarray(x, np.float64) for x in sol.ys)
        metrics["IP3_max_uM"] = float(ip3.max())
        metrics["Ca_max_uM"] = float(ca.max())
        arrays.update(t_ms=np.asarray(ts), IP3=ip3, Ca_astro=ca, h_IP3R=hr)
    written = [save_npz(os.path.join(out_dir, "trace.npz"), **arrays)]
    written.append(save_json(os.path.join(out_dir, "metrics.json"), metrics))
    if ts is not None:
        written.append(_plot(np.asarray(ts), ip3, ca, hr, y, y_ref, a, a_ref, T, s, os.path.join(out_dir, "episode.png"),
                             title=f"Li-Rinzel astrocyte, T={T} D={D} Dv={Dv} m={m}, window {s.window:g} ms, "
                                   f"nu={s.nu:g}"))
    print(f"astrojax simulate: astrocyte=li_rinzel, T={T} D={D} Dv={Dv} m={m}, window {s.window:g} ms, "
          f"{s.solver} (rtol={s.rtol:g}), {metrics['dtype']}\n"
          f"read-out vs random-feature attention: rel. error {metrics['y_rel_error']:.2e} (max), "
          f"{metrics['y_rel_error_token_median']:.2e} (median per token); normalised response vs RFA normaliser: "
          f"{metrics['a_rel_error_median']:.2e} (median)\n"
          f"(RFA is the linear-regime limit: weak drive, no IP3 decay, settled calcium; docs/li_rinzel.md)\n"
          f"time: compile {metrics['compile_time_s']:.2f} s, run {metrics['run_time_s']:.2f} s; "
          f"solver {'ok' if sol.ok else 'FAILED'} ({int(sol.num_steps)} steps)\n"
          f"wrote {', '.join(os.path.relpath(p) for p in written)}")
    if not bool(sol.ok):
        raise LiRinzelSimulationError(f"the calcium solve failed (max_steps={s.max_steps} per process; try "
                              "li_rinzel.max_steps=... or looser li_rinzel.rtol/atol)")
    return metrics


def _plot(ts, ip3, ca, hr, y, y_ref, a, a_ref, T, s, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .._io import atomic_open

    t = ts / 1000.0
    n = min(s.processes_plotted, ca.shape[1])
    idx = np.argsort(-ca.max(axis=0))[:n] if ca.size else []
    fig, ax = plt.subplots(3, 2, figsize=(11, 8))
    for r, (x, lab) in enumerate([(ip3, "IP3 (uM)"), (ca, "Ca_astro (uM)"), (hr, "h_IP3R")]):
        a_ = ax[r, 0]
        for i in idx:
            a_.plot(t, x[:, i], lw=0.9)
        a_.axvspan(T * s.window / 1000, 2 * T * s.window / 1000, color="0.9", lw=0, zorder=0)
        a_.set_ylabel(lab)
    ax[0, 0].set_title(f"{n} processes with the largest calcium (grey: read windows)", fontsize=9)
    ax[2, 0].set_xlabel("time (s)")
    d = min(3, y.shape[1])
    for j in range(d):
        ax[0, 1].plot(range(T), y[:, j], "o-", color=f"C{j}", ms=3, label=f"y[{j}]")
        ax[0, 1].plot(range(T), y_ref[:, j], "x--", color=f"C{j}", ms=4)
    ax[0, 1].set_title("read-out at the end of each read window (o) vs RFA (x)", fontsize=9)
    ax[0, 1].legend(fontsize=7, frameon=False)
    ax[1, 1].semilogy(range(T), a, "o-", ms=3, label="normalised response")
    ax[1, 1].semilogy(range(T), a_ref, "x--", ms=4, label="RFA normaliser")
    ax[1, 1].legend(fontsize=7, frameon=False)
    tok = np.linalg.norm(y - y_ref, axis=1) / np.linalg.norm(y_ref, axis=1)
    ax[2, 1].semilogy(range(T), tok, "o-", ms=3, label="|y - y_RFA| / |y_RFA|")
    ax[2, 1].semilogy(range(T), np.abs(a / a_ref - 1), "s-", ms=3, label="|a / a_RFA - 1|")
    ax[2, 1].legend(fontsize=7, frameon=False)
    ax[2, 1].set_xlabel("token")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path

