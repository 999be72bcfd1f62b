"""IP3 range of calcium oscillations of the Li--Rinzel astrocyte, and amplitude/frequency vs IP3.

IP3 is held constant (``IP3_0 = IP3`` and ``IP3(0) = IP3``, no input), NEST's default
parameters and initial calcium state otherwise. For each IP3 value the model is simulated
for ``--t-end`` seconds (all astrocytes in one vmapped Diffrax solve); the first
``--transient`` seconds are discarded and the rest split in two halves. An IP3 value
"oscillates" when calcium's peak-to-peak amplitude is at least ``--min-amp`` µM in both
halves and does not decay between them (second/first >= 0.9). Frequency = 1 / mean
interval between calcium peaks of the second half.

Independently of simulation, the two Hopf points (the IP3 values where the steady state's
eigenvalues cross the imaginary axis) come from linear stability analysis
(:func:`astrojax.astro.oscillations.hopf_points`). With ``--nest`` (needs NEST) the same
protocol is run with NEST's ``astrocyte_lr_1994`` on a coarser IP3 grid and both are
compared point by point.

Writes ``oscillations.json`` and ``oscillations.png`` next to this script (or ``--out-dir``).

    python experiments/li_rinzel/oscillations.py --nest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _nest_runs(ip3_values, t_end_ms, transient_ms, resolution, record_ms):
    import nest
    import numpy as np

    from astrojax.astro import NEST_DEFAULTS

    nest.set_verbosity("M_ERROR")
    out = []
    for x in ip3_values:
        nest.ResetKernel()
        nest.resolution = resolution
        a = nest.Create("astrocyte_lr_1994", params={**NEST_DEFAULTS, "IP3_0": float(x), "IP3": float(x)})
        mm = nest.Create("multimeter", params={"record_from": ["Ca_astro"], "interval": record_ms,
                                               "start": transient_ms - record_ms})
        nest.Connect(mm, a)
        t0 = time.perf_counter()
        nest.Simulate(t_end_ms + resolution)
        wall = time.perf_counter() - t0
        ev = mm.events
        sel = ev["times"] >= transient_ms
        out.append((np.asarray(ev["times"])[sel], np.asarray(ev["Ca_astro"])[sel], wall))
    return out


def _classify(ts, ca, min_amp):
    from astrojax.astro.oscillations import oscillation_features

    n = len(ca) // 2
    first = oscillation_features(ts[:n], ca[:n], min_amplitude=min_amp)
    second = oscillation_features(ts[n:], ca[n:], min_amplitude=min_amp)
    sustained = (first["amplitude"] >= min_amp and second["amplitude"] >= min_amp
                 and second["amplitude"] >= 0.9 * first["amplitude"])
    return {
        "oscillates": bool(sustained),
        "amplitude_uM": second["amplitude"],
        "frequency_hz": second["frequency_hz"] if sustained else None,
        "period_s": second["period_ms"] / 1000.0 if sustained else None,  # ms -> s
        "mean_Ca_uM": float(ca[n:].mean()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip3-min", type=float, default=0.1, help="µM")
    ap.add_argument("--ip3-max", type=float, default=1.0, help="µM")
    ap.add_argument("--ip3-step", type=float, default=0.0025, help="µM")
    ap.add_argument("--t-end", type=float, default=600.0, help="simulated time per IP3 value, s")
    ap.add_argument("--transient", type=float, default=200.0, help="discarded initial time, s")
    ap.add_argument("--record-ms", type=float, default=20.0, help="sampling interval of the traces, ms")
    ap.add_argument("--min-amp", type=float, default=1e-3, help="µM peak-to-peak for an oscillation")
    ap.add_argument("--nest", action="store_true", help="also run NEST's astrocyte_lr_1994 (coarser grid)")
    ap.add_argument("--nest-step", type=float, default=0.025, help="IP3 grid step of the NEST runs, µM")
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from astrojax.astro import LiRinzelParams, simulate_li_rinzel
    from astrojax.astro.oscillations import hopf_points, steady_state

    params = LiRinzelParams()
    t_end_ms, transient_ms = 1000.0 * args.t_end, 1000.0 * args.transient  # s -> ms
    ip3 = np.round(np.arange(args.ip3_min, args.ip3_max + 1e-9, args.ip3_step), 6)
    ts = jnp.arange(transient_ms, t_end_ms + 0.5 * args.record_ms, args.record_ms)

    def run(x):
        p = eqx.tree_at(lambda q: q.IP3_0, params, x)
        return simulate_li_rinzel(p, None, ts, rtol=1e-8, atol=1e-11)

    t0 = time.perf_counter()
    sols = jax.jit(jax.vmap(run))(jnp.asarray(ip3))
    sols.Ca_astro.block_until_ready()
    wall = time.perf_counter() - t0
    assert bool(jnp.all(sols.ok)), "a solve failed"
    ts_np, ca_all = np.asarray(ts), np.asarray(sols.Ca_astro)
    rows = [dict(IP3_uM=float(x), **_classify(ts_np, ca_all[i], args.min_amp)) for i, x in enumerate(ip3)]
    osc = [r["IP3_uM"] for r in rows if r["oscillates"]]
    hopf = [float(h) for h in hopf_points(params, 0.0, 3.0, 601)]
    ss_ca = np.asarray(jax.vmap(lambda x: steady_state(params, x)[0])(jnp.asarray(ip3)))
    for r, c in zip(rows, ss_ca):
        r["steady_state_Ca_uM"] = float(c)
    freq = [r["frequency_hz"] for r in rows if r["oscillates"]]
    amp = [r["amplitude_uM"] for r in rows if r["oscillates"]]
    result = {
        "command": "python experiments/li_rinzel/oscillations.py" + (" --nest" if args.nest else ""),
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "model": "astrojax.astro.LiRinzelParams() (NEST astrocyte_lr_1994 defaults), IP3 clamped at IP3_0",
        "solver": "Tsit5 + PID, rtol 1e-8, atol 1e-11, float64, one vmapped solve over all IP3 values",
        "hopf_points_uM": hopf,
        "oscillation_range_simulated_uM": [min(osc), max(osc)] if osc else None,
        "frequency_range_hz": [min(freq), max(freq)] if freq else None,
        "amplitude_range_uM": [min(amp), max(amp)] if amp else None,
        "wall_time_s_astrojax_incl_compile": wall,
        "n_ip3_values": int(ip3.size),
        "rows": rows,
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
    }

    nest_rows = None
    if args.nest:
        import nest  # noqa: F401  (fails loudly if --nest is asked without NEST)

        ip3_n = np.round(np.arange(args.ip3_min, args.ip3_max + 1e-9, args.nest_step), 6)
        runs = _nest_runs(ip3_n, t_end_ms, transient_ms, 0.1, args.record_ms)
        nest_rows = []
        for x, (tn, can, w) in zip(ip3_n, runs):
            nest_rows.append(dict(IP3_uM=float(x), wall_time_s=w, **_classify(tn, can, args.min_amp)))
        # point-by-point comparison on the shared IP3 values
        by_ip3 = {r["IP3_uM"]: r for r in rows}
        agree, dfreq, damp = 0, [], []
        for r in nest_rows:
            mine = by_ip3.get(r["IP3_uM"])
            if mine is None:
                continue
            agree += mine["oscillates"] == r["oscillates"]
            if mine["oscillates"] and r["oscillates"]:
                dfreq.append(abs(mine["frequency_hz"] - r["frequency_hz"]) / r["frequency_hz"])
                damp.append(abs(mine["amplitude_uM"] - r["amplitude_uM"]) / r["amplitude_uM"])
        result["nest"] = {
            "version": getattr(nest, "__version__", "unknown"),
            "resolution_ms": 0.1,
            "rows": nest_rows,
            "classification_agreement": f"{agree}/{len(nest_rows)}",
            "max_rel_diff_frequency": max(dfreq) if dfreq else None,
            "max_rel_diff_amplitude": max(damp) if damp else None,
        }

    # ---- figure
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    show = [0.3, 0.45, 0.62]
    for x in show:
        i = int(np.argmin(np.abs(ip3 - x)))
        sel = ts_np <= transient_ms + 60_000.0
        axs[0].plot((ts_np[sel] - transient_ms) / 1000.0, ca_all[i][sel], label=f"IP3 = {ip3[i]:.2f} µM")
    axs[0].set_xlabel(f"time after {args.transient:.0f} s (s)")
    axs[0].set_ylabel("Ca_astro (µM)")
    axs[0].set_ylim(0.0, 0.62)
    axs[0].legend(fontsize=8, ncol=3, loc="upper center")
    axs[0].set_title("calcium at constant IP3")
    a_amp = np.array([r["amplitude_uM"] if r["oscillates"] else 0.0 for r in rows])
    a_f = np.array([r["frequency_hz"] if r["oscillates"] else np.nan for r in rows])
    axs[1].plot(ip3, a_amp, "-", label="astrojax")
    axs[2].plot(ip3, a_f, "-", label="astrojax")
    if nest_rows:
        xn = [r["IP3_uM"] for r in nest_rows]
        axs[1].plot(xn, [r["amplitude_uM"] if r["oscillates"] else 0.0 for r in nest_rows], "o", mfc="none",
                    label="NEST astrocyte_lr_1994")
        axs[2].plot(xn, [r["frequency_hz"] if r["oscillates"] else np.nan for r in nest_rows], "o", mfc="none",
                    label="NEST astrocyte_lr_1994")
    for ax in axs[1:]:
        for h in hopf:
            ax.axvline(h, color="k", ls="--", lw=0.8)
        ax.set_xlabel("IP3 (µM)")
        ax.legend(fontsize=8)
    axs[1].set_ylabel("Ca peak-to-peak amplitude (µM)")
    axs[1].set_title("amplitude (dashed: Hopf points)")
    axs[2].set_ylabel("oscillation frequency (Hz)")
    axs[2].set_title("frequency")
    fig.tight_layout()

    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "oscillations.png")
    fig.savefig(png + ".tmp.png", dpi=110)
    os.replace(png + ".tmp.png", png)
    js = os.path.join(args.out_dir, "oscillations.json")
    with open(js + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(js + ".tmp", js)
    summary = {k: result[k] for k in ("hopf_points_uM", "oscillation_range_simulated_uM", "frequency_range_hz",
                                      "amplitude_range_uM", "wall_time_s_astrojax_incl_compile")}
    if "nest" in result:
        summary["nest"] = {k: v for k, v in result["nest"].items() if k != "rows"}
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
