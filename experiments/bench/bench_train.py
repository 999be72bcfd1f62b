"""Training-step benchmark: one optax step through the simulated network (fast path, and
optionally the Diffrax path) against the same step with the closed form (random-feature
attention with the same learned features), measured in one process.

    python experiments/bench/bench_train.py --repeats 20
    python experiments/bench/bench_train.py --heads 72 --batch 8 --T 64 --m 256 --diffrax

Reports compile time and the median step time of each (steps timed interleaved, one of
each per round), and their ratios; writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import astrojax as aj
from astrojax.train import losses
from astrojax.train.loop import OptimConfig, make_optimizer
from astrojax.train.students import HeadStudents, constrain, unconstrain


def make_step(student, method_name, q, k, v, y_ref, Z, opt):
    raw = unconstrain(student)
    params, static = eqx.partition(raw, eqx.is_inexact_array)

    def loss_fn(p):
        s = constrain(eqx.combine(p, static))
        if method_name == "closed_form":
            y, a = jax.vmap(jax.vmap(aj.random_feature_attention, (0, 0, 0, 0)), (1, 1, 1, None), (1, 1))(
                q, k, v, s.features)
        else:
            y, a = jax.vmap(s, in_axes=(1, 1, 1), out_axes=(1, 1))(q, k, v)
        return (jax.vmap(jax.vmap(losses.readout_error))(y, y_ref).mean()
                + 0.1 * jax.vmap(jax.vmap(losses.normaliser_log_error))(a, Z).mean())

    @eqx.filter_jit
    def step(p, o):
        loss, g = eqx.filter_value_and_grad(loss_fn)(p)
        u, o = opt.update(g, o, p)
        return eqx.apply_updates(p, u), o, loss

    return step, params, opt.init(params)


def bench(steps: dict, repeats: dict):
    """Compile each step once (timed), then time the steps *interleaved* (one call of each
    per round), so load changes on a shared machine hit every method alike. Returns
    ``{name: (compile_s, median_step_s, loss)}``."""
    out = {}
    for name, (step, params, opt_state) in steps.items():
        t0 = time.perf_counter()
        res = jax.block_until_ready(step(params, opt_state))
        out[name] = [time.perf_counter() - t0, [], float(res[2])]
    for r in range(max(repeats.values())):
        for name, (step, params, opt_state) in steps.items():
            if r < repeats[name]:
                t = time.perf_counter()
                jax.block_until_ready(step(params, opt_state))
                out[name][1].append(time.perf_counter() - t)
    return {n: (c, statistics.median(ts), loss) for n, (c, ts, loss) in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--diffrax", action="store_true", help="also time the Diffrax path (Heun, fixed --dt0)")
    ap.add_argument("--dt0", type=float, default=0.002,
                    help="Diffrax Heun step (window units); the shunted read-out is stiff (rate a/tau_y), "
                         "so too large a step diverges (dt0=0.01 gave a NaN loss at the default sizes)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    kq, kk, kv, ks = jax.random.split(jax.random.PRNGKey(0), 4)
    shape = (a.heads, a.batch, a.T, a.D)
    q, k, v = (jax.random.normal(x, shape) for x in (kq, kk, kv))
    y_ref, Z = jax.vmap(jax.vmap(aj.softmax_attention))(q, k, v)
    opt = make_optimizer(OptimConfig(), 1000)
    methods = {"closed_form": None, "fast": aj.FastPath()}
    if a.diffrax:
        methods["diffrax_heun"] = aj.DiffraxPath(solver=diffrax.Heun(), adaptive=False, dt0=a.dt0)
    steps, repeats = {}, {}
    for name, method in methods.items():
        student = HeadStudents(a.heads, a.m, a.D, key=ks, method=method or aj.FastPath())
        steps[name] = make_step(student, name, q, k, v, y_ref, Z, opt)
        repeats[name] = a.repeats if name != "diffrax_heun" else max(2, a.repeats // 5)
    res = {}
    for name, (c, r, loss) in bench(steps, repeats).items():
        res[name] = {"compile_s": c, "step_s": r, "loss": loss, "repeats": repeats[name]}
        print(f"{name:>14}: compile {c:7.2f} s   step {1e3 * r:9.1f} ms (median of {repeats[name]})   loss {loss:.5f}")
    base = res["closed_form"]["step_s"]
    for name in res:
        res[name]["ratio_to_closed_form"] = res[name]["step_s"] / base
        print(f"{name:>14}: {res[name]['ratio_to_closed_form']:.2f}x the closed-form step")
    res["sizes"] = vars(a)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
