"""`astrojax record` / `astrojax fit` with a learned-feature network and off-grid sample times.

Runs the two commands of docs/fitting.md ("Learned feature maps, samples off the grid")
in a temporary directory and writes, next to this file:

- `record_stdout.txt`, `fit_stdout.txt`: what the two commands print;
- `results.json`: the commands, truth, start, fitted values, standard errors, relative
  errors, sample times' distance from the bin-centre grid, loss, wall time.

A control fit runs the same data with the biases dropped (the performer map on the same
weights, `b = 0`): `control` in results.json.

    python experiments/fit/learned_features/run.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TRUTH = dict(tau_h=0.15, tau_a=0.25, tau_y=0.2, eta_H=1.2, eta_p=0.8)  # record.yaml's defaults
START = dict(tau_h=0.09, tau_a=0.15, tau_y=0.28, eta_H=0.8, eta_p=1.1)  # 33-47 % off
SPW = 20
RECORD = ["record", "out=rec.npz", "feature_map=learned_exp", "jitter=0.8", "seed=1", "plot=false",
          "hydra.run.dir=rrun"]
FIT = ["fit", "recording=rec.npz", "feature_map=learned_exp", "restarts=4",
       *[f"params.{n}={v}" for n, v in START.items()], "progress=false", "hydra.run.dir=frun"]


def cli(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "astrojax.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True)
    if res.returncode:
        raise SystemExit(f"astrojax {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout.replace(cwd + os.sep, "")  # no machine paths in committed files


def summary(fit_json, true_noise):
    """The fit's numbers; ``residual_std_over_noise``: per observed variable, the noise
    level estimated from the fit's residuals over the level the recording added (1: the
    model explains the data to the noise). (The loss itself is not comparable between
    fits: each is re-weighted by its own estimated noise levels.)"""
    out = json.load(open(fit_json))
    return dict(
        params={n: out["params"][n] for n in TRUTH},
        stderr={n: out["stderr"][n] for n in TRUTH},
        rel_error={n: out["params"][n] / TRUTH[n] - 1 for n in TRUTH},
        residual_std_over_noise={x: float(np.max(np.asarray(out["noise"][x]["estimated"]) / true_noise[x]))
                                 for x in out["observed"]},
        loss=out["loss"], converged=out["converged"], n_data=out["n_data"], wall_time_s=out["wall_time_s"],
    )


def main():
    with tempfile.TemporaryDirectory() as tmp:
        rec_out = cli(RECORD, tmp)
        fit_out = cli(FIT, tmp)
        z = dict(np.load(os.path.join(tmp, "rec.npz"), allow_pickle=False))
        t = z["t"] / float(z["window"])
        off = np.abs((t * SPW) % 1.0 - 0.5) / SPW  # distance from the nearest bin centre, windows
        noise = {x: np.atleast_1d(z[f"noise_{x}"]) for x in ("a", "p", "y")}  # std the generator added
        # control: the same recording as a performer recording (biases dropped)
        perf = {k: v for k, v in z.items() if k not in ("b", "feature_map")}
        np.savez(os.path.join(tmp, "rec_performer.npz"), **perf)
        ctrl = [a if a != "recording=rec.npz" else "recording=rec_performer.npz" for a in FIT]
        ctrl = [{"hydra.run.dir=frun": "hydra.run.dir=crun"}.get(a, a) for a in ctrl if a != "feature_map=learned_exp"]
        cli(ctrl, tmp)
        results = dict(
            commands=dict(record="astrojax " + " ".join(RECORD), fit="astrojax " + " ".join(FIT),
                          control="astrojax " + " ".join(ctrl) + "  # rec_performer.npz: rec.npz without b"),
            truth=TRUTH, start=START,
            samples=int(len(t)), biases_b=z["b"].tolist(),
            sample_offset_from_bin_centres_windows=dict(min=float(off.min()), median=float(np.median(off)),
                                                        max=float(off.max())),
            learned_exp=summary(os.path.join(tmp, "frun", "fit.json"), noise),
            control=summary(os.path.join(tmp, "crun", "fit.json"), noise),
        )
    with open(os.path.join(HERE, "record_stdout.txt"), "w") as f:
        f.write(rec_out)
    with open(os.path.join(HERE, "fit_stdout.txt"), "w") as f:
        f.write(fit_out)
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(json.dumps({k: results[k] for k in ("learned_exp", "control")}, indent=2))


if __name__ == "__main__":
    main()
