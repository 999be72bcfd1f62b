"""Parameter recovery from synthetic calcium imaging (astrojax.astro.fit_imaging).

For each of ``--n`` recordings (seed ``i``):

- true parameters: NEST's defaults with every free parameter multiplied by a log-uniform
  factor in [0.8, 1.25] (the fit starts from the defaults, so it never starts at the truth);
- drive: ``--traces`` dF/F traces per recording, each with its own piecewise-constant IP3
  drive: 10 s of rest, a weak pulse (rate 0.05-0.12 per ms for 20-30 s, below the
  oscillation threshold), 15-30 s of rest, a strong pulse (0.18-0.35 per ms for 20-35 s:
  calcium oscillates), rest until the end (150 s); frames every 100 ms;
- imaging: the default GCaMP-like indicator, Poisson shot noise (1000 photons per frame at
  zero calcium);
- fit: :func:`fit_imaging` with ``--restarts`` vmapped Levenberg-Marquardt restarts.

Per free parameter it reports the fraction of recordings whose estimate is within 10 % of
the truth, the coverage of estimate +- 2 SE (fraction containing the truth; about 95 %
if the standard errors are calibrated), the median |relative error| and the median
relative SE, over all recordings and (when some fit did not converge) over the converged
fits only. Writes ``fit_recovery[_<tag>].json`` and ``.md`` next to this script
(``--from-json`` recomputes both from the JSON's per-recording rows without fitting).

    python experiments/li_rinzel/fit_recovery.py                       # 6 default free parameters
    python experiments/li_rinzel/fit_recovery.py --n 20 --free identifiable --traces 2 --tag all12
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
T_END = 150_000.0  # ms
FRAME = 100.0  # ms


def make_drive(rng):
    from astrojax.astro import RateInput

    a0 = 10_000.0
    a1 = a0 + rng.uniform(20_000.0, 30_000.0)
    b0 = a1 + rng.uniform(15_000.0, 30_000.0)
    b1 = b0 + rng.uniform(20_000.0, 35_000.0)
    rates = [rng.uniform(0.05, 0.12), 0.0, rng.uniform(0.18, 0.35)]
    return RateInput([a0, a1, b0, b1], rates), dict(edges_ms=[a0, a1, b0, b1], rates_per_ms=rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="number of recordings")
    ap.add_argument("--traces", type=int, default=1, help="dF/F traces (cells) per recording")
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--free", default="default", help="'default', 'identifiable' or comma-separated names")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--from-json", action="store_true",
                    help="no fitting: recompute the summaries and the table from fit_recovery[_tag].json")
    args = ap.parse_args(argv)
    if args.from_json:
        base = os.path.join(HERE, "fit_recovery" + (f"_{args.tag}" if args.tag else ""))
        with open(base + ".json") as fh:
            write_outputs(json.load(fh), args.tag)
        return

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from astrojax.astro import LiRinzelParams
    from astrojax.astro.fit_imaging import IDENTIFIABLE, NonIdentifiabilityWarning, fit_imaging, synthesize_imaging

    default_free = fit_imaging.__defaults__[0]
    free = {"default": default_free, "identifiable": IDENTIFIABLE}.get(args.free)
    if free is None:
        free = tuple(s.strip() for s in args.free.split(","))
    p0 = LiRinzelParams()
    ts = jnp.arange(0.0, T_END + 1.0, FRAME)
    rows = []
    t_start = time.perf_counter()
    for i in range(args.n):
        rng = np.random.default_rng(i)
        factors = np.exp(rng.uniform(np.log(0.8), np.log(1.25), len(free)))
        truth = p0.replace(**{n: float(getattr(p0, n)) * f for n, f in zip(free, factors)})
        drives, protocol = zip(*[make_drive(rng) for _ in range(args.traces)])
        rec = synthesize_imaging(truth, list(drives), ts, key=jax.random.PRNGKey(10_000 + i), noise="poisson")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonIdentifiabilityWarning)
            fit = fit_imaging(rec, free, n_restarts=args.restarts, key=jax.random.PRNGKey(i))
        dt = time.perf_counter() - t0
        row = {
            "seed": i,
            "drive": list(protocol),
            "fit_seconds": dt,
            "converged": fit.converged,
            "reduced_chi2": fit.reduced_chi2,
            "lm_steps": fit.n_steps,
            "at_bound": list(fit.at_bound),
            "warned": any(issubclass(w.category, NonIdentifiabilityWarning) for w in caught),
            "non_identifiable": list(fit.non_identifiable),
            "flat_directions": list(fit.flat_directions),
            "restart_costs": [float(c) for c in fit.restart_costs],
            "params": {},
        }
        for n in free:
            tv, est, se = float(getattr(truth, n)), fit.estimate[n], fit.se[n]
            row["params"][n] = {
                "truth": tv,
                "estimate": est,
                "se": se,
                "rel_error": est / tv - 1.0,
                "rel_se": fit.rel_se[n],
                "within_10pct": abs(est / tv - 1.0) <= 0.10,
                "covered_2se": abs(est - tv) <= 2.0 * se,
            }
        rows.append(row)
        worst = max(abs(v["rel_error"]) for v in row["params"].values())
        print(f"recording {i:2d}: fit {dt:6.1f} s, reduced chi2 {fit.reduced_chi2:.3f}, "
              f"worst |rel error| {worst:.3%}, converged {fit.converged}", flush=True)

    cmd = "python experiments/li_rinzel/fit_recovery.py" + "".join(
        f" --{k} {v}" for k, v in [("n", args.n), ("traces", args.traces), ("restarts", args.restarts),
                                   ("free", args.free), ("tag", args.tag)] if v not in ("", None))
    out = {
        "command": cmd,
        "setup": {
            "n_recordings": args.n,
            "traces_per_recording": args.traces,
            "duration_ms": T_END,
            "frame_ms": FRAME,
            "noise": "poisson",
            "indicator": "IndicatorParams() defaults",
            "truth": "NEST defaults, free parameters x log-uniform [0.8, 1.25]",
            "init": "NEST defaults",
            "restarts": args.restarts,
            "free": list(free),
        },
        "total_seconds": time.perf_counter() - t_start,
        "recordings": rows,
    }
    write_outputs(out, args.tag)


def _summary(rows, free):
    import numpy as np

    out = {}
    for n in free:
        v = [r["params"][n] for r in rows]
        out[n] = {
            "within_10pct": float(np.mean([x["within_10pct"] for x in v])),
            "coverage_2se": float(np.mean([x["covered_2se"] for x in v])),
            "median_abs_rel_error": float(np.median([abs(x["rel_error"]) for x in v])),
            "max_abs_rel_error": float(np.max([abs(x["rel_error"]) for x in v])),
            "median_rel_se": float(np.median([x["rel_se"] for x in v])),
        }
    z = np.array([[r["params"][n]["rel_error"] for n in free] for r in rows])
    return out, float(np.mean(np.all(np.abs(z) <= 0.10, axis=1)))


def _table(summary):
    lines = ["| parameter | within 10 % | coverage of ±2 SE | median abs. rel. error | max abs. rel. error | median rel. SE |",
             "|---|---|---|---|---|---|"]
    for n, s in summary.items():
        lines.append(f"| `{n}` | {s['within_10pct']:.0%} | {s['coverage_2se']:.0%} | "
                     f"{s['median_abs_rel_error']:.2%} | {s['max_abs_rel_error']:.2%} | {s['median_rel_se']:.2%} |")
    return lines


def write_outputs(out, tag):
    """Summaries (all recordings; converged fits only) -> fit_recovery[_tag].json and .md."""
    import numpy as np

    rows, free, st = out["recordings"], out["setup"]["free"], out["setup"]
    conv = [r for r in rows if r["converged"]]
    out["summary"], out["all_within_10pct_fraction"] = _summary(rows, free)
    out["n_converged"] = len(conv)
    if conv:
        out["summary_converged"], out["all_within_10pct_fraction_converged"] = _summary(conv, free)
    out["converged_fraction"] = len(conv) / len(rows)
    out["recordings_warned"] = int(sum(r["warned"] for r in rows))
    out["median_reduced_chi2"] = float(np.median([r["reduced_chi2"] for r in rows]))
    out["max_reduced_chi2"] = float(np.max([r["reduced_chi2"] for r in rows]))
    out["median_fit_seconds_after_first"] = float(np.median([r["fit_seconds"] for r in rows[1:]])) \
        if len(rows) > 1 else float(rows[0]["fit_seconds"])
    out["first_fit_seconds_with_compile"] = rows[0]["fit_seconds"]
    base = os.path.join(HERE, "fit_recovery" + (f"_{tag}" if tag else ""))
    with open(base + ".json.tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(base + ".json.tmp", base + ".json")

    lines = [f"Recovery over {len(rows)} synthetic recordings ({st['traces_per_recording']} trace(s) of "
             f"{st['duration_ms'] / 1000:.0f} s each, {st['restarts']} restarts); command: `{out['command']}`", ""]
    lines += _table(out["summary"])
    lines += [
        "",
        f"All free parameters within 10 % in {out['all_within_10pct_fraction']:.0%} of the recordings; "
        f"converged {len(conv)} of {len(rows)}; non-identifiability warnings in "
        f"{out['recordings_warned']} recording(s); reduced chi-square median {out['median_reduced_chi2']:.3f}, "
        f"max {out['max_reduced_chi2']:.3f}; median fit time {out['median_fit_seconds_after_first']:.1f} s "
        "(after the first, compiling, fit).",
        "",
    ]
    if conv and len(conv) < len(rows):
        bad = [r for r in rows if not r["converged"]]
        lines += [
            f"Not converged (`ImagingFit.converged` false): recording(s) "
            + ", ".join(f"{r['seed']} (reduced chi-square {r['reduced_chi2']:.3f})" for r in bad)
            + f". The {len(conv)} converged fits alone:",
            "",
            *_table(out["summary_converged"]),
            "",
            f"All free parameters within 10 % in {out['all_within_10pct_fraction_converged']:.0%} of the converged fits.",
            "",
        ]
    with open(base + ".md.tmp", "w") as fh:
        fh.write("\n".join(lines))
    os.replace(base + ".md.tmp", base + ".md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
