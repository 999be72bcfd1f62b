"""Numerical range of the simulated network: q, k scaled by 1e-3 ... 1e3 (N(0, 1) inputs, T = 8,
D = 8, Dv = 3, m = 32, read_gain="normalised", 4 seeds per scale, both protocols). For each
scale: how many float64 solves (FastPath(n_sub=32), the reference) and float32 solves
(FastPath() defaults) return an out-of-range code, and the largest error of the successful
float32 solves against the float64 reference (max-norm relative y error, and log a error
relative to max(1, |log a|)).

    python experiments/core/range.py > experiments/core/range_output.txt
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import astrojax as aj  # noqa: E402
from astrojax.simulate import solve_head  # noqa: E402


def head(seed, T=8, D=8, Dv=3, m=32):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(k1, (T, D)), jax.random.normal(k2, (T, D)), jax.random.normal(k3, (T, Dv)),
            jax.random.normal(k4, (m, D)))


def rel(y, r):
    return float(np.max(np.abs(np.asarray(y, np.float64) - np.asarray(r))) / np.max(np.abs(np.asarray(r))))


print("scale: float64 out-of-range / float32 out-of-range (of 4) / worst float32 error of the rest")
for kind in ("bidirectional", "causal"):
    pr = aj.Protocol(kind, read_gain="normalised")
    f64 = jax.jit(lambda q, k, v, W: solve_head(aj.PerformerFeatures(W), aj.NeuronAstrocyteParams(), q, k, v, pr,
                                                aj.FastPath(n_sub=32)))
    P32 = aj.NeuronAstrocyteParams(dtype=jnp.float32)
    f32 = jax.jit(lambda q, k, v, W: solve_head(aj.PerformerFeatures(W), P32, q, k, v, pr, aj.FastPath()))
    print(kind)
    for ls in np.linspace(-3, 3, 25):
        s = 10.0 ** ls
        bad64 = bad32 = 0
        errs = []
        for seed in range(4):
            q, k, v, W = head(seed)
            ref = f64(s * q, s * k, v, W)
            c = lambda x: x.astype(jnp.float32)  # noqa: E731
            sol = f32(c(s * q), c(s * k), c(v), c(W))
            bad64 += int(ref.result != aj.RESULTS.successful)
            if sol.result != aj.RESULTS.successful:
                bad32 += 1
                continue
            la = float(np.max(np.abs(np.asarray(sol.log_a, np.float64) - np.asarray(ref.log_a))))
            errs.append(max(rel(sol.y, ref.y), la / max(1.0, float(np.max(np.abs(np.asarray(ref.log_a)))))))
        worst = f"{max(errs):.1e}" if errs else "-"
        print(f"  {s:9.3g}: {bad64} / {bad32} / {worst}", flush=True)
