"""A synthetic calcium-imaging trace of the Li--Rinzel astrocyte (example figure).

120 s of model time: NEST-default astrocyte, Poisson synaptic input at 20 Hz (weight 10)
for 0-60 s, then none; calcium observed through the GCaMP-like indicator of
:mod:`astrojax.astro.fluorescence` (default indicator, Poisson shot noise, frames every
100 ms). Writes ``imaging_example.png`` and ``imaging_example.json`` (summary numbers)
next to this script.

    python experiments/li_rinzel/imaging_example.py
"""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from astrojax.astro import IndicatorParams, LiRinzelParams, SpikeInput, observe_fluorescence, simulate_li_rinzel

    rng = np.random.default_rng(0)
    T_in, T = 60_000.0, 120_000.0  # ms
    spikes = np.sort(rng.uniform(0.0, T_in, rng.poisson(0.02 * T_in)))
    ts = jnp.arange(0.0, T + 1.0, 100.0)  # 10 frames per second
    sol = simulate_li_rinzel(LiRinzelParams(), SpikeInput(spikes, 10.0), ts)
    assert bool(sol.ok)
    ind = IndicatorParams()
    img = observe_fluorescence(ts, sol.Ca_astro, ind, key=jax.random.PRNGKey(0), noise="poisson")

    t_s = np.asarray(ts) / 1000.0  # ms -> s
    fig, axs = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axs[0].plot(t_s, sol.IP3)
    axs[0].set_ylabel("IP3 (µM)")
    axs[0].axvspan(0, T_in / 1000.0, color="0.9")
    axs[1].plot(t_s, sol.Ca_astro)
    axs[1].set_ylabel("Ca_astro (µM)")
    axs[2].plot(t_s, img.dff, lw=0.6, label="recorded (shot noise)")
    axs[2].plot(t_s, img.dff_mean, lw=1.2, label="expected")
    axs[2].set_ylabel("dF/F")
    axs[2].set_xlabel("time (s)")
    axs[2].legend(fontsize=8)
    axs[0].set_title("Li-Rinzel astrocyte, 20 Hz Poisson input for 60 s (shaded), GCaMP-like imaging")
    fig.tight_layout()
    png = os.path.join(HERE, "imaging_example.png")
    fig.savefig(png + ".tmp.png", dpi=100)
    os.replace(png + ".tmp.png", png)

    resid = np.asarray(img.dff - img.dff_mean)
    out = {
        "command": "python experiments/li_rinzel/imaging_example.py",
        "n_spikes": int(spikes.size),
        "peak_Ca_uM": float(sol.Ca_astro.max()),
        "peak_dff_expected": float(img.dff_mean.max()),
        "dff_noise_sd": float(resid.std()),
        "indicator": {k: float(getattr(ind, k)) for k in ("Kd", "n_hill", "k_off", "R", "F_min", "tau_bleach")},
    }
    with open(os.path.join(HERE, "imaging_example.json.tmp"), "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(os.path.join(HERE, "imaging_example.json.tmp"), os.path.join(HERE, "imaging_example.json"))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
