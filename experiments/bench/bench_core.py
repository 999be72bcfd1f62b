"""Benchmark: simulated neuron--astrocyte attention vs the closed-form RFA, one process.

Batch 8, T = 128, D = Dv = 32, m in {256, 4096}, one head, timescale-limit parameters
(tau = 0.02 of a window). Reports compile time and run time separately (medians over
repeats) and ratios to the closed form measured in the same process, for the forward
pass and forward + gradient (w.r.t. q, k, v, W and the time constants), for the fast
path and the Diffrax path, and the relative error of each against the closed form.

    python experiments/bench/bench_core.py [--repeats 20] [--m 256 4096] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import astrojax as aj


def timeit(fn, args, repeats):
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), out


def make_fns(protocol, method, params):
    causal = protocol.causal

    def closed(q, k, v, W, P):
        return jax.vmap(lambda q, k, v: aj.random_feature_attention(q, k, v, W, causal=causal))(q, k, v)

    def sim(q, k, v, W, P):
        return jax.vmap(
            lambda q, k, v: aj.simulate_attention(q, k, v, W, protocol=protocol, params=P, method=method)
        )(q, k, v)

    def loss_of(f):
        def loss(q, k, v, W, P):
            y, a = f(q, k, v, W, P)
            return jnp.mean(y**2) + jnp.mean(jnp.log(a))

        return eqx.filter_jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))

    return eqx.filter_jit(closed), eqx.filter_jit(sim), loss_of(closed), loss_of(sim)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--m", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--protocol", default="bidirectional", choices=["bidirectional", "causal"])
    ap.add_argument("--no-diffrax", action="store_true", help="skip the (slow) Diffrax path")
    ap.add_argument("--diffrax-m", type=int, nargs="*", default=[256],
                    help="m values at which the Diffrax path is also timed (it is slow)")
    ap.add_argument("--tau", type=float, default=0.02, help="tau_h = tau_a = tau_y (windows)")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    args = ap.parse_args(argv)

    key = jax.random.PRNGKey(0)
    kq, kk, kv, kw = jax.random.split(key, 4)
    B, T, D = args.batch, args.T, args.D
    q = jax.random.normal(kq, (B, T, D), jnp.float32)
    k = jax.random.normal(kk, (B, T, D), jnp.float32)
    v = jax.random.normal(kv, (B, T, D), jnp.float32)
    protocol = aj.Protocol(args.protocol)
    P = aj.NeuronAstrocyteParams(tau_h=args.tau, tau_a=args.tau, tau_y=args.tau, dtype=jnp.float32)
    methods = {"fast": aj.FastPath(n_sub=4)}
    if not args.no_diffrax:
        methods["diffrax_heun_dt0.01"] = aj.DiffraxPath(solver=diffrax.Heun(), adaptive=False, dt0=0.01)
    results = {
        "config": dict(batch=B, T=T, D=D, protocol=args.protocol, repeats=args.repeats, tau=args.tau),
        "machine": dict(platform=platform.platform(), devices=[str(d) for d in jax.devices()], jax=jax.__version__),
        "rows": [],
    }
    for m in args.m:
        W = jax.random.normal(jax.random.fold_in(kw, m), (m, D), jnp.float32)
        xs = (q, k, v, W, P)
        for name, method in methods.items():
            if name != "fast" and m not in args.diffrax_m:
                continue
            reps = args.repeats if name == "fast" else max(1, args.repeats // 10)
            closed, sim, gclosed, gsim = make_fns(protocol, method, P)
            c_cl, r_cl, (y_cl, a_cl) = timeit(closed, xs, args.repeats)
            c_si, r_si, (y_si, a_si) = timeit(sim, xs, reps)
            c_gcl, r_gcl, _ = timeit(gclosed, xs, args.repeats)
            c_gsi, r_gsi, _ = timeit(gsim, xs, reps)
            err_y = float(jnp.max(jnp.abs(y_si - y_cl)) / jnp.max(jnp.abs(y_cl)))
            err_a = float(jnp.max(jnp.abs(a_si / a_cl - 1)))
            row = dict(
                m=m,
                method=name,
                closed_run_ms=1e3 * r_cl,
                sim_run_ms=1e3 * r_si,
                fwd_ratio=r_si / r_cl,
                closed_grad_run_ms=1e3 * r_gcl,
                sim_grad_run_ms=1e3 * r_gsi,
                grad_ratio_vs_closed_grad=r_gsi / r_gcl,
                grad_over_fwd=r_gsi / r_si,
                compile_s=dict(closed=c_cl, sim=c_si, closed_grad=c_gcl, sim_grad=c_gsi),
                rel_err_y=err_y,
                rel_err_a=err_a,
            )
            results["rows"].append(row)
            print(
                f"m={m:5d} {name:20s} fwd {1e3*r_si:8.2f} ms = {r_si/r_cl:7.2f}x closed ({1e3*r_cl:.2f} ms) | "
                f"fwd+grad {1e3*r_gsi:8.2f} ms = {r_gsi/r_si:5.2f}x fwd, {r_gsi/r_gcl:6.2f}x closed grad | "
                f"compile {c_si:.1f}s/{c_gsi:.1f}s | rel err y {err_y:.1e} a {err_a:.1e}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
