"""Measured floors of the timescale limit (the numbers quoted in docs/model.md).

Solves the one-head equations of docs/model.md ("Continuous-time equations") with
scipy's ``solve_ivp`` (LSODA, rtol 1e-10), window by window, in float64, written here
straight from the equations (no astrojax solver involved), and compares the read-out at
the end of each reading window with the closed-form random-feature attention (RFA,
``astrojax.random_feature_attention``). Three measurements:

1. bidirectional protocol, fast neurons (tau_h = tau_a = tau_y = tau), no leak: the
   read-out error against RFA for write-gate delays 0, 0.1, 0.2 and tau 0.01, 0.02, 0.04
   (with no delay the error is the hidden-rate onset lag, linear in tau_h);
2. causal protocol at tau = 0.02 and 0.01 with the read gain 1/(tokens written so far)
   (the library's convention) and with a fixed gain 1/T (the alternative it replaces);
3. the same read-outs from the library's own fast path, as a cross-check of the reference.

Errors are ``max |y - y_rfa| / max |y_rfa|`` over the episode (as in the tests) and the
worst single token's ``|y_t - y_rfa_t| / |y_rfa_t|``; ``min_a_over_tau_y`` is the smallest
raw astrocyte response of the episode in the limit divided by ``tau_y`` (the read-out of that
query relaxes as ``exp(-min_a_over_tau_y)`` within its window).

Run from the repository root (about a minute on one CPU core)::

    python experiments/model_floors/floors.py   # -> experiments/model_floors/floors.json
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import astrojax as aj  # noqa: E402

OUT = pathlib.Path(__file__).with_name("floors.json")
T, D, DV, M, SEED = 16, 16, 4, 32, 0


def episode(fk, fq, v, *, causal, tau, write_delay, gain):
    """y, a at the end of each read window; ``gain``: "written" (1/(t+1) causal, 1/T
    bidirectional) or "total" (1/T always). Zero initial state, eta = 1, tau_H = tau_p = 1."""
    m, dv = fk.shape[1], v.shape[1]
    sh, sH, sp = slice(0, m), slice(m, m + dv * m), slice(m + dv * m, 2 * m + dv * m)
    ia = 2 * m + dv * m
    sy = slice(ia + 1, ia + 1 + dv)
    n = ia + 1 + dv

    def rhs(_t, x, f, val, w, r, g):
        h, H, p, a, y = x[sh], x[sH].reshape(dv, m), x[sp], x[ia], x[sy]
        dx = np.empty(n)
        dx[sh] = (f - h) / tau
        dx[sH] = (w * np.outer(val, h)).ravel()
        dx[sp] = w * h
        dx[ia] = (r * g * (p @ h) - a) / tau
        dx[sy] = (r * g * (H @ h) - a * y) / tau
        return dx

    if causal:
        windows = []
        for t in range(T):
            windows += [("w", t), ("r", t)]
    else:
        windows = [("w", t) for t in range(T)] + [("r", t) for t in range(T)]
    x = np.zeros(n)
    y_out, a_out = np.zeros((T, dv)), np.zeros(T)
    written = 0
    for kind, t in windows:
        if kind == "w":
            written += 1
            segs = ([(write_delay, 0.0)] if write_delay > 0 else []) + [(1.0 - write_delay, 1.0)]
            args = lambda w: (fk[t], v[t], w, 0.0, 0.0)  # noqa: E731
        else:
            g = 1.0 / (written if gain == "written" else T)
            segs = [(1.0, 0.0)]
            args = lambda w: (fq[t], np.zeros(dv), 0.0, 1.0, g)  # noqa: E731
        for length, w in segs:
            sol = solve_ivp(rhs, (0.0, length), x, method="LSODA", args=args(w), rtol=1e-10, atol=1e-12)
            assert sol.success, sol.message
            x = sol.y[:, -1].copy()
        if kind == "r":
            y_out[t], a_out[t] = x[sy], x[ia]
    return y_out, a_out


def errors(y, y_ref):
    tok = np.linalg.norm(y - y_ref, axis=1) / np.linalg.norm(y_ref, axis=1)
    return {"rel_err_max_abs": float(np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ref))),
            "worst_token_rel_err": float(tok.max()), "median_token_rel_err": float(np.median(tok))}


def main():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(SEED), 4)
    q, k = jax.random.normal(k1, (T, D)), jax.random.normal(k2, (T, D))
    v, W = jax.random.normal(k3, (T, DV)), jax.random.normal(k4, (M, D))
    s = D ** -0.25
    fmap = aj.PerformerFeatures(W)
    fk, fq, vn = np.asarray(fmap(k * s)), np.asarray(fmap(q * s)), np.asarray(v)
    ref, a_ref = {}, {}
    for c in (False, True):
        y_c, a_c = aj.random_feature_attention(q, k, v, W, causal=c)
        ref[c], a_ref[c] = np.asarray(y_c), np.asarray(a_c)
    written = {"written": {False: np.full(T, T), True: np.arange(1, T + 1)},
               "total": {False: np.full(T, T), True: np.full(T, T)}}

    def settle(causal, gain, tau, d):
        """min over queries of the raw astrocyte response / tau_y, i.e. of
        (1 - write_delay) x read gain x kernel mass / tau_y (plasticity is open for
        1 - write_delay of each write window): the shunted read-out of that query relaxes
        as exp(-this) within its window once the response is up."""
        return float((1.0 - d) * np.min(a_ref[causal] / written[gain][causal]) / tau)

    t0 = time.time()
    rows = []
    for tau in (0.01, 0.02, 0.04):
        for d in (0.0, 0.1, 0.2):
            y, _ = episode(fk, fq, vn, causal=False, tau=tau, write_delay=d, gain="written")
            e = errors(y, ref[False])
            rows.append({"protocol": "bidirectional", "tau": tau, "write_delay": d, "gain": "1/T", **e,
                         "rel_err_over_tau": e["rel_err_max_abs"] / tau,
                         "min_a_over_tau_y": settle(False, "written", tau, d)})
    for tau in (0.02, 0.01):
        for gain in ("written", "total"):
            y, _ = episode(fk, fq, vn, causal=True, tau=tau, write_delay=0.2, gain=gain)
            rows.append({"protocol": "causal", "tau": tau, "write_delay": 0.2,
                         "gain": "1/(t+1)" if gain == "written" else "1/T", **errors(y, ref[True]),
                         "min_a_over_tau_y": settle(True, gain, tau, 0.2)})
    check = []
    for kind in ("bidirectional", "causal"):
        for tau in (0.02, 0.01):
            P = aj.NeuronAstrocyteParams(tau_h=tau, tau_a=tau, tau_y=tau)
            y_lib, _ = aj.simulate_attention(q, k, v, W, protocol=kind, params=P,
                                             method=aj.FastPath(n_sub=64))
            y_sp, _ = episode(fk, fq, vn, causal=kind == "causal", tau=tau, write_delay=0.2, gain="written")
            check.append({"protocol": kind, "tau": tau, "library_fast_path_n_sub_64_vs_scipy":
                          errors(np.asarray(y_lib), y_sp)["rel_err_max_abs"]})
    out = {
        "command": "python experiments/model_floors/floors.py",
        "setup": {"T": T, "D": D, "Dv": DV, "m": M, "seed": SEED, "feature_map": "performer",
                  "tau_H": 1.0, "tau_p": 1.0, "eta_H": 1.0, "eta_p": 1.0, "leaks": 0.0,
                  "reference": "scipy solve_ivp LSODA rtol 1e-10 atol 1e-12, float64",
                  "error": "rel_err_max_abs = max|y - y_rfa| / max|y_rfa| over the episode; "
                           "token errors |y_t - y_rfa_t| / |y_rfa_t|"},
        "rows": rows,
        "library_check": check,
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "numpy": np.__version__, "scipy": scipy.__version__},
        "seconds": round(time.time() - t0, 1),
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print({k: (round(v, 8) if isinstance(v, float) else v) for k, v in r.items()})
    for c in check:
        print(c)
    print(f"wrote {OUT.relative_to(pathlib.Path.cwd()) if OUT.is_relative_to(pathlib.Path.cwd()) else OUT.name}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
