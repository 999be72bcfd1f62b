"""Cost of the Li--Rinzel astrocyte per simulated second: astrojax vs NEST vs scipy (needs NEST).

Workload (the same in every simulator): ``N`` independent astrocytes with NEST's default
parameters, each driven by its own Poisson spike train (20 Hz, weight 10, delay 1 ms; the
spike times lie on NEST's 0.1 ms grid) and starting from its own random state inside the
oscillatory regime (IP3 0.3-0.6 µM, Ca_astro 0.07-0.4 µM, h_IP3R 0.4-0.8), so the cells
oscillate out of phase from the first step. Calcium is recorded every 100 ms (an imaging
frame rate) for ``T`` ms of model time.

- **NEST** 3.10: ``N`` ``astrocyte_lr_1994`` nodes, one ``spike_generator`` per node
  (one-to-one), one multimeter; resolution 0.1 ms (GSL RKF45, steps capped at the
  resolution; NEST offers no tolerance setting), one thread. Network construction
  (ResetKernel, Create, Connect) is timed as its "compile"; ``nest.Simulate`` as its run.
- **astrojax**: ``jax.vmap`` of :func:`simulate_li_rinzel` over the ``N`` cells (padded
  spike trains), Tsit5 + PID, float64 at the default tolerances (rtol 1e-9, atol 1e-12:
  the NEST-parity setting, 3e-8 relative agreement) and float32 at its defaults (1e-5,
  1e-8). Compiled ahead of time (``jax.jit(f).lower(...).compile()``, reported), then run.
- **scipy** ``solve_ivp`` (RK45, rtol 1e-9, atol 1e-12) of the same three equations in
  plain Python floats (the independent reference of tests/test_li_rinzel.py), integrated
  segment by segment between spike arrivals, one cell after the other; ``N`` = 1 and 100.

Timing: in each round every simulator runs in turn, in a rotated order (interleaved, so
load changes on the shared machine mostly cancel), after one untimed warm-up run of each.
Within its turn a simulator is called repeatedly until 0.5 s have passed (at least once,
at most 50 calls) and the median call is that round's time; reported times are medians
over rounds and a ratio is the median over rounds of the per-round ratio. One process; the machine's load
average is recorded. As a check that the three solve the same problem, the maximum
|Ca_astro| difference to NEST over all recorded samples is reported (the first round).

    python experiments/li_rinzel/bench_nest.py            # -> bench_nest.json, bench_nest.png
    python experiments/li_rinzel/bench_nest.py --quick    # N = 1, 100 only, fewer rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RES = 0.1  # NEST resolution, ms
FRAME = 100.0  # recording interval, ms
DELAY = 1.0  # ms
WEIGHT = 10.0
RATE = 0.02  # spikes per ms (20 Hz)
MIN_ROUND_S = 0.5  # a method's calls in one round last at least this long ...
MAX_CALLS = 50  # ... or this many calls


def make_workload(N, T, seed):
    """Spike steps per cell (on the 0.1 ms grid), arrivals (ms, NEST's float arithmetic) and
    initial states (IP3, Ca, h) per cell."""
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
    from test_li_rinzel_nest import _on_grid

    rng = np.random.default_rng(seed)
    spikes, arrivals = [], []
    for _ in range(N):
        n = rng.poisson(RATE * T)
        steps = np.unique(np.round(rng.uniform(1.0, T - 2.0 * DELAY, n) / RES).astype(np.int64))
        spikes.append(_on_grid(steps, RES))
        arrivals.append(_on_grid(steps + int(round(DELAY / RES)), RES))
    y0 = np.stack([rng.uniform(0.3, 0.6, N), rng.uniform(0.07, 0.4, N), rng.uniform(0.4, 0.8, N)], 1)
    return spikes, arrivals, y0


def nest_build(nest, spikes, y0):
    import numpy as np

    nest.set_verbosity("M_ERROR")
    nest.ResetKernel()
    nest.resolution = RES
    nest.local_num_threads = 1
    N = len(spikes)
    astro = nest.Create("astrocyte_lr_1994", N)
    astro.set([{"IP3": float(a), "Ca_astro": float(b), "h_IP3R": float(c)} for a, b, c in y0])
    gens = nest.Create("spike_generator", N)
    gens.set([{"spike_times": list(map(float, s))} for s in spikes])
    nest.Connect(gens, astro, "one_to_one", syn_spec={"weight": WEIGHT, "delay": DELAY})
    mm = nest.Create("multimeter", params={"record_from": ["Ca_astro"], "interval": FRAME})
    nest.Connect(mm, astro)
    return astro, mm, np


def nest_read(mm, astro, np, n_frames):
    ev = mm.events
    senders, times, ca = np.asarray(ev["senders"]), np.asarray(ev["times"]), np.asarray(ev["Ca_astro"])
    ids = np.asarray(astro.tolist())
    out = np.full((ids.size, n_frames), np.nan)
    col = np.round(times / FRAME).astype(int) - 1
    row = np.searchsorted(ids, senders)
    ok = (col >= 0) & (col < n_frames)
    out[row[ok], col[ok]] = ca[ok]
    return out


def scipy_cell(arrivals, y0, t_eval):
    import numpy as np
    from scipy.integrate import solve_ivp

    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
    from test_li_rinzel import DEFAULTS, reference_rhs

    f = reference_rhs(DEFAULTS)
    y = np.array(y0, float)
    out = np.full(t_eval.size, np.nan)
    arr, cnt = np.unique(arrivals, return_counts=True)
    keep = (arr > 0) & (arr <= t_eval[-1])
    arr, cnt = arr[keep], cnt[keep]
    edges = np.concatenate([[0.0], arr, [t_eval[-1]]])
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if b > a:
            sel = (t_eval >= a) & (t_eval < b)
            sol = solve_ivp(f, (a, b), y, method="RK45", rtol=1e-9, atol=1e-12,
                            t_eval=np.append(t_eval[sel], b))  # samples in [a, b), then the end b
            out[sel] = sol.y[1, :-1]
            y = sol.y[:, -1].copy()
        if i < arr.size:
            y[0] += DEFAULTS["delta_IP3"] * WEIGHT * cnt[i]
    out[t_eval == t_eval[-1]] = min(max(y[1], 0.0), DEFAULTS["Ca_tot"])
    return out


def run_size(N, T, rounds, do_scipy, seed, nest):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from astrojax.astro import LiRinzelParams, LiRinzelState, SpikeInput, simulate_li_rinzel

    spikes, arrivals, y0 = make_workload(N, T, seed)
    n_frames = int(round(T / FRAME))
    ts_np = FRAME * np.arange(1, n_frames + 1)
    row = {"N": N, "T_ms": T, "rounds": rounds, "n_spikes": int(sum(len(s) for s in spikes))}

    # astrojax: compile ahead of time, per dtype
    jx = {}
    for name, dt in (("astrojax_f64", jnp.float64), ("astrojax_f32", jnp.float32)):
        batch = SpikeInput.from_lists(arrivals, weights=WEIGHT, dtype=dt)
        y0s = LiRinzelState(*(jnp.asarray(y0[:, i], dt) for i in range(3)))
        ts = jnp.asarray(ts_np, dt)
        params = LiRinzelParams(dtype=dt)

        def f(b, y, ts=ts, params=params):
            sol = jax.vmap(lambda i, s: simulate_li_rinzel(params, i, ts, y0=s))(b, y)
            return sol.Ca_astro, jnp.all(sol.ok), jnp.max(sol.num_steps)

        c0 = time.perf_counter()
        comp = jax.jit(f).lower(batch, y0s).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - c0
        jx[name] = (comp, batch, y0s)

    def run_nest():
        c0 = time.perf_counter()
        astro, mm, _ = nest_build(nest, spikes, y0)
        build = time.perf_counter() - c0
        t0 = time.perf_counter()
        nest.Simulate(T + RES)
        return time.perf_counter() - t0, build, (mm, astro)

    def run_jax(name):
        comp, batch, y0s = jx[name]
        t0 = time.perf_counter()
        ca, ok, steps = comp(batch, y0s)
        ca.block_until_ready()
        return time.perf_counter() - t0, (np.asarray(ca), bool(ok), int(steps))

    def run_scipy():
        t0 = time.perf_counter()
        out = np.stack([scipy_cell(a, y, ts_np) for a, y in zip(arrivals, y0)])
        return time.perf_counter() - t0, out

    names = ["nest", "astrojax_f64", "astrojax_f32"] + (["scipy"] if do_scipy else [])
    times = {n: [] for n in names}  # per round: median over the calls of that round
    calls = {n: [] for n in names}
    builds = []
    checks = {}
    # untimed warm-up of every method (first-call costs: imports, caches, NEST's model setup)
    run_nest(), run_scipy() if do_scipy else None, run_jax("astrojax_f64"), run_jax("astrojax_f32")
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            ts_round, t_start = [], time.perf_counter()
            while True:  # repeat a cheap call until MIN_ROUND_S have passed (at most MAX_CALLS)
                if n == "nest":
                    dt, b, handles = run_nest()
                    builds.append(b)
                    if r == 0 and not ts_round:
                        checks["nest"] = nest_read(handles[0], handles[1], np, n_frames)
                elif n == "scipy":
                    dt, out = run_scipy()
                    if r == 0 and not ts_round:
                        checks["scipy"] = out
                else:
                    dt, (ca, ok, steps) = run_jax(n)
                    if r == 0 and not ts_round:
                        checks[n] = ca
                        row[f"{n}_ok"] = ok
                        row[f"{n}_max_solver_steps"] = steps
                ts_round.append(dt)
                if time.perf_counter() - t_start >= MIN_ROUND_S or len(ts_round) >= MAX_CALLS:
                    break
            times[n].append(statistics.median(ts_round))
            calls[n].append(len(ts_round))
        print(f"  N={N} round {r}: " + ", ".join(f"{n} {times[n][-1]:.4f} s x{calls[n][-1]}" for n in names),
              flush=True)

    sim_s = T / 1000.0
    for n in names:
        row[f"{n}_run_s_median"] = statistics.median(times[n])
        row[f"{n}_run_s_all"] = times[n]
        row[f"{n}_calls_per_round"] = calls[n]
        row[f"{n}_s_per_simulated_s"] = statistics.median(times[n]) / sim_s
    row["nest_build_s_median"] = statistics.median(builds)
    for n in names:
        if n != "nest":
            row[f"nest_over_{n}"] = statistics.median([a / b for a, b in zip(times["nest"], times[n])])
    ref = checks["nest"]
    for n in names:
        if n != "nest":
            row[f"{n}_max_abs_diff_Ca_vs_nest_uM"] = float(np.nanmax(np.abs(checks[n] - ref)))
    row["Ca_range_uM"] = [float(np.nanmin(ref)), float(np.nanmax(ref))]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import nest

    sizes = [(1, 2000.0, 7, True), (100, 2000.0, 5, True)]
    if not args.quick:
        sizes.append((10_000, 500.0, 3, False))
    else:
        sizes = [(1, 2000.0, 3, True), (100, 1000.0, 3, True)]
    rows = []
    load0 = os.getloadavg()
    for N, T, rounds, do_scipy in sizes:
        print(f"N = {N}, T = {T} ms", flush=True)
        rows.append(run_size(N, T, rounds, do_scipy, seed=N, nest=nest))
    out = {
        "command": "python experiments/li_rinzel/bench_nest.py" + (" --quick" if args.quick else ""),
        "versions": {"nest": getattr(nest, "__version__", "unknown"), "jax": jax.__version__,
                     "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "workload": {"rate_hz": RATE * 1000, "weight": WEIGHT, "delay_ms": DELAY, "nest_resolution_ms": RES,
                     "record_interval_ms": FRAME, "nest_threads": 1,
                     "astrojax": "vmap(simulate_li_rinzel), Tsit5 + PID; f64 rtol 1e-9 atol 1e-12; f32 rtol 1e-5 atol 1e-8",
                     "scipy": "solve_ivp RK45 rtol 1e-9 atol 1e-12, segment per spike, cells sequential"},
        "sizes": rows,
    }
    name = "bench_nest_quick" if args.quick else "bench_nest"
    path = os.path.join(HERE, name + ".json")
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(path + ".tmp", path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    Ns = [r["N"] for r in rows]
    for n, lab, mk in [("nest", "NEST 3.10 (RKF45, 0.1 ms)", "o"), ("astrojax_f64", "astrojax float64 (vmap)", "s"),
                       ("astrojax_f32", "astrojax float32 (vmap)", "^"), ("scipy", "scipy solve_ivp (RK45)", "D")]:
        xs = [r["N"] for r in rows if f"{n}_s_per_simulated_s" in r]
        ys = [r[f"{n}_s_per_simulated_s"] for r in rows if f"{n}_s_per_simulated_s" in r]
        ax.loglog(xs, ys, marker=mk, label=lab)
    ax.set_xlabel("astrocytes N")
    ax.set_ylabel("wall seconds per simulated second")
    ax.set_xticks(Ns)
    ax.set_xticklabels([str(n) for n in Ns])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Li-Rinzel astrocytes, 20 Hz Poisson drive, one process (CPU)")
    fig.tight_layout()
    png = os.path.join(HERE, name + ".png")
    fig.savefig(png + ".tmp.png", dpi=100)
    os.replace(png + ".tmp.png", png)
    print(json.dumps({r["N"]: {k: v for k, v in r.items() if "per_simulated" in k or "over" in k} for r in rows},
                     indent=1))


if __name__ == "__main__":
    main()
