"""Recovery and standard-error coverage of ``astrojax fit`` over many seeds.

For each seed: a fresh episode (random q, k, v, W), its traces a, p (summed), y sampled
20 times per window with Gaussian noise of 5 % of each channel's signal std, made either
by the library's own simulator (``--source astrojax``: :func:`astrojax.fit.synthesize`)
or by the independent scipy ``solve_ivp`` implementation of tests/scipy_reference.py
(``--source scipy``: own random draws at jittered, irregular sample times; with
``--same-draws`` the very draws and grid of ``synthesize``, a direct comparison); then an LM fit of tau_h, tau_a, tau_y, eta_H, eta_p (tau_H = tau_p
= 1, no leaks) with 8 restarts from the default initial values (0.1 window, gains 1).

Reported per parameter: relative errors (median |err|, max |err|, fraction within 5 %)
and the coverage of the reported +-2 standard errors (delta-method SE on the value, and
the log-scale interval from the unconstrained SE).

    python experiments/fit/coverage.py --seeds 20 --source astrojax --dtype float64
    python experiments/fit/coverage.py --seeds 20 --source scipy --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--source", choices=("astrojax", "scipy"), default="astrojax")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--same-draws", action="store_true",
                    help="scipy: draw inputs and noise exactly as synthesize() does for the same seed, on the same "
                         "sample grid (a direct comparison of the two simulators); default: own draws "
                         "(seed + 1000) at jittered, irregular sample times")
    ap.add_argument("--out", default=None, help="JSON file for the per-seed results")
    args = ap.parse_args(argv)

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import numpy as np

    from astrojax.fit import SYNTHETIC_TRUTH, Recording, fit_recording, synthesize

    free = ("tau_h", "tau_a", "tau_y", "eta_H", "eta_p")
    T, D, Dv, m, spw = 4, 4, 2, 8, 20
    truth = dict(SYNTHETIC_TRUTH)

    def scipy_recording(seed):
        sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
        from scipy_reference import scipy_sample

        rng = np.random.default_rng(seed if args.same_draws else seed + 1000)
        q, k = rng.standard_normal((T, D)), rng.standard_normal((T, D))
        v, W = rng.standard_normal((T, Dv)), rng.standard_normal((m, D))

        def phi(x):
            x = x / D ** 0.25
            return np.exp(x @ W.T - 0.5 * np.sum(x * x, 1, keepdims=True)) / np.sqrt(m)

        ts = (np.arange(2 * T * spw) + 0.5) / spw
        if not args.same_draws:  # irregular sampling, off the generator's grid
            ts = ts + rng.uniform(-0.3, 0.3, ts.shape) / spw
        ref = scipy_sample(phi(k), phi(q), v, ts, protocol="bidirectional", write_delay=0.2, **truth)
        clean = {"a": ref["a"], "p": ref["p"].sum(1), "y": ref["y"]}
        obs = {x: z + args.noise * z.std(0) * rng.standard_normal(z.shape) for x, z in clean.items()}
        return Recording(t=ts, window=1.0, protocol="bidirectional", q=q, k=k, v=v, observed=obs, W=W,
                         truth=truth, source=f"<scipy seed={seed}>")

    rows = []
    t_start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if args.source == "astrojax":
            rec = synthesize(T=T, D=D, Dv=Dv, m=m, samples_per_window=spw, noise=args.noise, seed=seed)
        else:
            rec = scipy_recording(seed)
        t0 = time.perf_counter()
        res = fit_recording(rec, free=free, restarts=args.restarts, seed=seed)
        dt = time.perf_counter() - t0
        row = dict(seed=seed, loss=res.loss, converged=res.converged, seconds=dt, warnings=res.warnings)
        for n in free:
            fit, se, se_log = res.params[n], res.stderr[n], res.stderr_unconstrained[n]
            row[n] = dict(fit=fit, truth=truth[n], rel_error=fit / truth[n] - 1, stderr=se, stderr_log=se_log,
                          cover=abs(fit - truth[n]) <= 2 * se,
                          cover_log=abs(np.log(fit) - np.log(truth[n])) <= 2 * se_log)
        rows.append(row)
        print(f"seed {seed:3d}: " + "  ".join(f"{n} {100 * row[n]['rel_error']:+6.2f}%{'' if row[n]['cover'] else '*'}"
                                              for n in free) + f"   ({dt:.1f} s)", flush=True)
    total = time.perf_counter() - t_start

    summary = {}
    print(f"\n{args.source} recordings, {args.dtype}, noise {args.noise:g} x signal std, {len(rows)} seeds, "
          f"{args.restarts} restarts (* = truth outside +-2 SE)")
    print("| parameter | truth | median abs. rel. error | max abs. rel. error | within 5 % | "
          "+-2 SE coverage | +-2 SE coverage (log scale) | median SE / value |")
    print("|---|---|---|---|---|---|---|---|")
    for n in free:
        e = np.array([abs(r[n]["rel_error"]) for r in rows])
        cov = np.mean([r[n]["cover"] for r in rows])
        cov_log = np.mean([r[n]["cover_log"] for r in rows])
        rse = np.median([r[n]["stderr"] / r[n]["fit"] for r in rows])
        summary[n] = dict(median_abs_rel_error=float(np.median(e)), max_abs_rel_error=float(e.max()),
                          within_5pct=float(np.mean(e < 0.05)), coverage_2se=float(cov),
                          coverage_2se_log=float(cov_log), median_rel_stderr=float(rse))
        print(f"| {n} | {truth[n]:g} | {100 * np.median(e):.2f} % | {100 * e.max():.2f} % | "
              f"{int(np.sum(e < 0.05))}/{len(rows)} | {int(round(cov * len(rows)))}/{len(rows)} | "
              f"{int(round(cov_log * len(rows)))}/{len(rows)} | {100 * rse:.2f} % |")
    allcov = np.mean([r[n]["cover"] for r in rows for n in free])
    print(f"\noverall +-2 SE coverage: {100 * allcov:.1f} % of {len(rows) * len(free)} (parameter, seed) pairs; "
          f"converged {sum(r['converged'] for r in rows)}/{len(rows)}; wall time {total:.0f} s "
          f"(fit median {np.median([r['seconds'] for r in rows]):.1f} s, first incl. compilation "
          f"{rows[0]['seconds']:.0f} s)")
    tag = "_same_draws" if args.same_draws and args.source == "scipy" else ""
    out = args.out or os.path.join(HERE, f"coverage_{args.source}{tag}_{args.dtype}.json")
    with open(out, "w") as f:
        json.dump(dict(args=vars(args), summary=summary, overall_coverage=float(allcov), seeds=rows), f, indent=1,
                  default=lambda x: bool(x) if isinstance(x, np.bool_) else float(x))
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
