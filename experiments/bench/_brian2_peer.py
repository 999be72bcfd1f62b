"""The one-head neuron--astrocyte ODE written for Brian2 (a peer in bench_core.py).

Numpy only (no JAX), so it can be tested in any environment where ``brian2`` imports.
The equations are those of tests/scipy_reference.py (time unit: one token window, here
one Brian2 second)::

    tau_h dh/dt = f - h                        hidden neurons (m), NeuronGroup
    tau_p dp/dt = w eta_p h - lambda_p p       astrocyte processes, same group
    tau_H dH/dt = w eta_H v h - lambda_H H     tripartite synapses hidden -> output (Dv x m)
    tau_a da/dt = r g sum_j p_j h_j - a        astrocyte response (one-neuron group)
    tau_y dy/dt = r g sum_j H_ij h_j - a y     output neurons (Dv)

Inputs are piecewise constant on a grid fine enough to hold every segment edge (the
write-gate delay); they are TimedArrays indexed by the integer time step
(``t_in_timesteps * dt``) so that the RK4 stages of a step never read the next segment's
input. The sums reach other groups through Brian2 summed and linked variables, which
Brian2 evaluates once per time step, so the coupling is first order in ``dt`` even with
the ``rk4`` state updater: that is how Brian2 integrates a network.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def brian2_simulate(phi_k, phi_q, v, *, protocol, tau_h, tau_H, tau_p, tau_a, tau_y, eta_H=1.0, eta_p=1.0,
                    lambda_H=0.0, lambda_p=0.0, write_delay=0.0, dt=0.002, method="rk4"):
    """Run one episode with Brian2 (numpy code generation). Returns ``y`` (T, Dv), the
    output rates at the end of each read window, in token order."""
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    b2.BrianLogger.suppress_name("resolution_conflict")
    phi_k, phi_q, v = (np.asarray(x, np.float64) for x in (phi_k, phi_q, v))
    T, m = phi_k.shape
    Dv = v.shape[1]
    d = Fraction(write_delay).limit_denominator(1000)
    if float(d) != write_delay:
        raise ValueError(f"write_delay must be a fraction with denominator <= 1000, got {write_delay}")
    K = d.denominator  # grid cells per window; the gate opens after d.numerator of them
    steps = round(1.0 / dt)
    if abs(steps * dt - 1.0) > 1e-12 or steps % K:
        raise ValueError(f"dt must divide the input grid (1/{K} window), got {dt}")
    # episode: window order and its inputs (bidirectional: write all, read all; causal: alternate)
    if protocol == "bidirectional":
        windows = [("w", t) for t in range(T)] + [("r", t) for t in range(T)]
        gain = lambda t: 1.0 / T  # noqa: E731
    elif protocol == "causal":
        windows = [x for t in range(T) for x in (("w", t), ("r", t))]
        gain = lambda t: 1.0 / (t + 1)  # noqa: E731
    else:
        raise ValueError(f"protocol must be 'bidirectional' or 'causal', got {protocol!r}")
    J = len(windows)
    F = np.zeros((J * K, m))
    V = np.zeros((J * K, Dv))
    Wg, Rg, G = (np.zeros(J * K) for _ in range(3))
    for j, (kind, t) in enumerate(windows):
        cells = slice(j * K, (j + 1) * K)
        if kind == "w":
            F[cells] = phi_k[t]
            V[cells] = v[t]
            Wg[j * K + d.numerator:(j + 1) * K] = 1.0
        else:
            F[cells] = phi_q[t]
            Rg[cells] = 1.0
            G[cells] = gain(t)
    grid = (1.0 / K) * b2.second
    ns = dict(f_in=b2.TimedArray(F, dt=grid), v_in=b2.TimedArray(V, dt=grid), w_in=b2.TimedArray(Wg, dt=grid),
              rg_in=b2.TimedArray(Rg * G, dt=grid), dtc=dt * b2.second,
              tau_h=tau_h * b2.second, tau_H=tau_H * b2.second, tau_p=tau_p * b2.second,
              tau_a=tau_a * b2.second, tau_y=tau_y * b2.second,
              eta_H=eta_H, eta_p=eta_p, lambda_H=lambda_H, lambda_p=lambda_p)
    clock = dict(dt=dt * b2.second)
    hidden = b2.NeuronGroup(m, """dh/dt = (f_in(t_in_timesteps*dtc, i) - h)/tau_h : 1
                                  dp/dt = (w_in(t_in_timesteps*dtc)*eta_p*h - lambda_p*p)/tau_p : 1""",
                            method=method, namespace=ns, **clock)
    astro = b2.NeuronGroup(1, """da/dt = (rg_in(t_in_timesteps*dtc)*ph - a)/tau_a : 1
                                 ph : 1""", method=method, namespace=ns, **clock)
    out = b2.NeuronGroup(Dv, """dy/dt = (rg_in(t_in_timesteps*dtc)*Hh - a_l*y)/tau_y : 1
                                Hh : 1
                                a_l : 1 (linked)""", method=method, namespace=ns, **clock)
    out.a_l = b2.linked_var(astro, "a", index=np.zeros(Dv, int))
    to_astro = b2.Synapses(hidden, astro, "ph_post = p_pre*h_pre : 1 (summed)", namespace=ns, **clock)
    to_astro.connect()
    syn = b2.Synapses(hidden, out, """dH/dt = (w_in(t_in_timesteps*dtc)*eta_H*v_in(t_in_timesteps*dtc, j)*h_pre
                                               - lambda_H*H)/tau_H : 1 (clock-driven)
                                      Hh_post = H*h_pre : 1 (summed)""",
                      method=method, namespace=ns, **clock)
    syn.connect()
    mon = b2.StateMonitor(out, "y", record=True, dt=1.0 * b2.second)  # y at t = 0, 1, 2, ... (window edges)
    net = b2.Network(hidden, astro, out, to_astro, syn, mon)
    net.run((J + 0.5) * b2.second, namespace=ns)
    y_edges = np.asarray(mon.y).T  # (J + 1, Dv): row j + 1 is the end of window j
    y = np.zeros((T, Dv))
    for j, (kind, t) in enumerate(windows):
        if kind == "r":
            y[t] = y_edges[j + 1]
    return y


def _self_test(T=4, m=16, Dv=3, D=8, dt=0.002, tol=1e-3):
    """Compare with the independent scipy reference of tests/scipy_reference.py (tight DOP853)."""
    import os
    import sys
    import time

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    from scipy_reference import scipy_simulate

    rng = np.random.default_rng(0)
    W = rng.normal(size=(m, D))

    def feat(x):
        x = x * D ** -0.25
        return np.exp(x @ W.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(m)

    q, k, v = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=(T, Dv))
    taus = dict(tau_h=0.02, tau_H=1.0, tau_p=1.0, tau_a=0.02, tau_y=0.02)
    for protocol in ("bidirectional", "causal"):
        ref = scipy_simulate(feat(k), feat(q), v, protocol=protocol, write_delay=0.2, method="DOP853",
                             rtol=1e-10, atol=1e-12, **taus)["y"]
        t0 = time.perf_counter()
        y = brian2_simulate(feat(k), feat(q), v, protocol=protocol, write_delay=0.2, dt=dt, **taus)
        err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
        print(f"brian2 {protocol}: T={T} m={m} dt={dt}: {time.perf_counter() - t0:.1f} s, "
              f"max-norm relative error vs scipy DOP853 (rtol 1e-10) {err:.1e}")
        assert err < tol, (protocol, err)


if __name__ == "__main__":
    _self_test()
