"""Agreement of astrojax's Li--Rinzel astrocyte with NEST's ``astrocyte_lr_1994`` (needs NEST).

The two scenarios of tests/test_li_rinzel_nest.py (same NEST runner, same inputs), 60 s of
model time recorded at every resolution step:

- ``defaults_poisson``: NEST defaults, 20 Hz Poisson spikes of weight 10, delay 1 ms,
  resolution 0.1 ms; SIC read through a ``sic_connection`` to ``aeif_cond_alpha_astro``.
  astrojax is run at several tolerances (Tsit5 + PID, float64) to show which side limits
  the agreement.
- ``all_parameters_changed``: every parameter scaled by a factor in [0.8, 1.25],
  non-default initial state, 25 Hz regular bursts (2 s on / 2 s off), weight 8,
  delay 1.5 ms, resolution 0.05 ms.

Reported per state variable: max over samples of |astrojax - NEST| / |NEST|. Wall times
(one run each, same process; astrojax compile and run timed separately) are indicative
only: the machine is shared.

    python experiments/li_rinzel/nest_parity.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
    import test_li_rinzel_nest as ref  # the test's NEST runner and input generators
    from astrojax.astro import NEST_DEFAULTS, LiRinzelParams, LiRinzelState, SpikeInput, simulate_li_rinzel

    nest = ref.nest
    out = {"command": "python experiments/li_rinzel/nest_parity.py", "model_time_s": ref.T_MS / 1000.0,
           "versions": {"nest": getattr(nest, "__version__", "unknown"), "jax": jax.__version__,
                        "python": platform.python_version()}}

    # ---- scenario 1
    res, w, d, d_sic = 0.1, 10.0, 1.0, 2.0
    steps = ref._poisson_steps(0.02, ref.T_MS, seed=0, resolution=res)
    spikes, arrivals = ref._on_grid(steps, res), ref._on_grid(steps + int(round(d / res)), res)
    t0 = time.perf_counter()
    nr = ref._run_nest(NEST_DEFAULTS, spikes, w, d, res, ref.T_MS, sic_delay=d_sic)
    nest_wall = time.perf_counter() - t0
    ts = jnp.asarray(nr["times"])
    sweep = []
    for rtol, atol in [(1e-6, 1e-9), (1e-8, 1e-11), (1e-9, 1e-12), (1e-11, 1e-14), (1e-12, 1e-15)]:
        f = jax.jit(lambda p, i, rtol=rtol, atol=atol: simulate_li_rinzel(p, i, ts, rtol=rtol, atol=atol))
        args = (LiRinzelParams(), SpikeInput(arrivals, w))
        c0 = time.perf_counter()
        f(*args).Ca_astro.block_until_ready()
        c1 = time.perf_counter()
        sol = f(*args)
        sol.Ca_astro.block_until_ready()
        c2 = time.perf_counter()
        assert bool(sol.ok)
        row = {"rtol": rtol, "atol": atol, "solver_steps": int(sol.num_steps),
               "max_rel_err": ref._rel_errors(sol, nr),
               "astrojax_first_call_s": c1 - c0, "astrojax_run_s": c2 - c1}
        # SIC through the neuron: I_SIC(t) = SIC(t - d_sic)
        k = int(round(d_sic / res))
        astro_step = np.round(nr["times"] / res).astype(np.int64)
        src = np.round(nr["sic_times"] / res).astype(np.int64) - k
        ok = src >= astro_step[0]
        idx = np.searchsorted(astro_step, src[ok])
        i_sic = nr["I_SIC"][ok]
        row["max_abs_err_SIC_over_max_SIC"] = float(np.max(np.abs(i_sic - np.asarray(sol.SIC)[idx])) / i_sic.max())
        sweep.append(row)
        print(json.dumps({k2: v for k2, v in row.items()}))
    out["defaults_poisson"] = {
        "input": "20 Hz Poisson (seed 0), weight 10, delay 1 ms, resolution 0.1 ms, SIC delay 2 ms",
        "n_spikes": int(len(spikes)), "n_samples": int(len(nr["times"])),
        "nest_wall_s": nest_wall, "tolerance_sweep": sweep,
    }

    # ---- scenario 2
    rng = np.random.default_rng(11)
    params = {k: v * float(rng.uniform(0.8, 1.25)) for k, v in NEST_DEFAULTS.items()}
    state = {"IP3": 0.25, "Ca_astro": 0.1, "h_IP3R": 0.7}
    res, w, d = 0.05, 8.0, 1.5
    steps = np.arange(800, int((ref.T_MS - 10.0) / res), 800)
    steps = steps[(steps // 40_000) % 2 == 0]
    spikes, arrivals = ref._on_grid(steps, res), ref._on_grid(steps + int(round(d / res)), res)
    nr = ref._run_nest(params, spikes, w, d, res, ref.T_MS, state=state)
    sol = simulate_li_rinzel(LiRinzelParams(**params), SpikeInput(arrivals, w), jnp.asarray(nr["times"]),
                             y0=LiRinzelState(**{k: jnp.asarray(v) for k, v in state.items()}))
    assert bool(sol.ok)
    out["all_parameters_changed"] = {
        "params": params, "initial_state": state,
        "input": "25 Hz regular, 2 s on / 2 s off, weight 8, delay 1.5 ms, resolution 0.05 ms",
        "rtol": 1e-9, "atol": 1e-12, "max_rel_err": ref._rel_errors(sol, nr),
    }
    print(json.dumps(out["all_parameters_changed"]["max_rel_err"]))

    path = os.path.join(HERE, "nest_parity.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(path + ".tmp", path)
    return out


if __name__ == "__main__":
    main()
