"""The one-head neuron--astrocyte ODE written for Brian2 (a peer in bench_core.py).

Numpy only (no JAX), so it can be tested in any environment where ``brian2`` imports
(``python experiments/bench/_brian2_peer.py`` compares it with tests/scipy_reference.py).
The equations are those of tests/scipy_reference.py (time unit: one token window, here
one Brian2 second)::

    tau_h dh/dt = f - h                          hidden neurons (m), NeuronGroup
    tau_p dp/dt = w eta_p h - lambda_p p         astrocyte processes, same group
    tau_H dH/dt = w eta_H v h - lambda_H H       tripartite synapses hidden -> output (Dv x m)
    tau_a da/dt = r g sum_j p_j h_j - a          astrocyte response (one-neuron group)
    tau_y dy/dt = r g sum_j H_ij h_j - a y       output neurons (Dv)

The episode -- which drive, value, plasticity gate and read gain each window has, and
the memory rescaling at window starts under gain control -- is taken from
tests/scipy_reference.py (``_windows``), so both integrate the same piecewise-constant
ODE. Inputs are TimedArrays on a grid fine enough to hold every segment edge (the
write-gate delay), indexed by the integer time step (``t_in_timesteps * dt``) so that
the RK4 stages of a step never read the next segment's input; the memory rescaling is a
``run_regularly`` at each window start. The sums reach other groups through Brian2
summed and linked variables, which Brian2 evaluates once per time step, so the coupling
is first order in ``dt`` even with the ``rk4`` state updater: that is how Brian2
integrates a network.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction

import numpy as np

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")


def _episode_windows(phi_k, phi_q, v, protocol, gain_control):
    sys.path.insert(0, _TESTS)
    try:
        from scipy_reference import _windows
    finally:
        sys.path.pop(0)
    return _windows(phi_k, phi_q, v, protocol, gain_control)


def brian2_simulate(phi_k, phi_q, v, *, protocol, tau_h, tau_H, tau_p, tau_a, tau_y, eta_H=1.0, eta_p=1.0,
                    lambda_H=0.0, lambda_p=0.0, write_delay=0.0, gain_control=False, dt=0.002, method="rk4"):
    """Run one episode with Brian2 (numpy code generation). Returns ``y`` (T, Dv), the
    output rates at the end of each read window, in token order."""
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    b2.BrianLogger.suppress_name("resolution_conflict")
    phi_k, phi_q, v = (np.asarray(x, np.float64) for x in (phi_k, phi_q, v))
    T, m = phi_k.shape
    Dv = v.shape[1]
    if protocol not in ("bidirectional", "causal"):
        raise ValueError(f"protocol must be 'bidirectional' or 'causal', got {protocol!r}")
    d = Fraction(write_delay).limit_denominator(1000)
    if float(d) != write_delay:
        raise ValueError(f"write_delay must be a fraction with denominator <= 1000, got {write_delay}")
    K = d.denominator  # grid cells per window; the gate opens after d.numerator of them
    steps = round(1.0 / dt)
    if abs(steps * dt - 1.0) > 1e-12 or steps % K:
        raise ValueError(f"dt must divide the input grid (1/{K} window), got {dt}")
    windows = _episode_windows(phi_k, phi_q, v, protocol, gain_control)
    J = len(windows)
    F = np.zeros((J * K, m))
    V = np.zeros((J * K, Dv))
    Wg, RG = np.zeros(J * K), np.zeros(J * K)
    RS = np.ones(J + 1)
    for j, (kind, _t, f, val, g, omega, rescale, _) in enumerate(windows):
        cells = slice(j * K, (j + 1) * K)
        F[cells] = f
        RS[j] = rescale
        if kind == "write":
            V[cells] = val
            Wg[j * K + d.numerator:(j + 1) * K] = omega
        else:
            RG[cells] = g
    grid = (1.0 / K) * b2.second
    ns = dict(f_in=b2.TimedArray(F, dt=grid), v_in=b2.TimedArray(V, dt=grid), w_in=b2.TimedArray(Wg, dt=grid),
              rg_in=b2.TimedArray(RG, dt=grid), rs_in=b2.TimedArray(RS, dt=1.0 * b2.second), dtc=dt * b2.second,
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
    # memory rescaling (gain control) at each window start, before that step's update
    hidden.run_regularly("p = p*rs_in(t_in_timesteps*dtc)", dt=1.0 * b2.second, when="start")
    syn.run_regularly("H = H*rs_in(t_in_timesteps*dtc)", dt=1.0 * b2.second, when="start")
    mon = b2.StateMonitor(out, "y", record=True, dt=1.0 * b2.second)  # y at t = 0, 1, 2, ... (window edges)
    net = b2.Network(hidden, astro, out, to_astro, syn, mon)
    net.run((J + 0.5) * b2.second, namespace=ns)
    y_edges = np.asarray(mon.y).T  # (J + 1, Dv): row j + 1 is the end of window j
    y = np.zeros((T, Dv))
    for j, (kind, t, *_) in enumerate(windows):
        if kind == "read":
            y[t] = y_edges[j + 1]
    return y


def _self_test(T=4, m=16, Dv=3, D=8, dt=0.002, tol=1e-3):
    """Compare with the independent scipy reference of tests/scipy_reference.py (tight DOP853)."""
    import time

    sys.path.insert(0, _TESTS)
    from scipy_reference import scipy_simulate

    rng = np.random.default_rng(0)
    W = rng.normal(size=(m, D))

    def feat(x):
        x = x * D ** -0.25
        return np.exp(x @ W.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(m)

    q, k, v = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=(T, Dv))
    taus = dict(tau_h=0.02, tau_H=1.0, tau_p=1.0, tau_a=0.02, tau_y=0.02)
    for protocol in ("bidirectional", "causal"):
        for gc in (False, True):
            kw = dict(protocol=protocol, write_delay=0.2, gain_control=gc, **taus)
            ref = scipy_simulate(feat(k), feat(q), v, method="DOP853", rtol=1e-10, atol=1e-12, **kw)["y"]
            t0 = time.perf_counter()
            y = brian2_simulate(feat(k), feat(q), v, dt=dt, **kw)
            err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
            print(f"brian2 {protocol}, gain control {gc}: T={T} m={m} dt={dt}: {time.perf_counter() - t0:.1f} s, "
                  f"max-norm relative error vs scipy DOP853 (rtol 1e-10) {err:.1e}")
            assert err < tol, (protocol, gc, err)


if __name__ == "__main__":
    _self_test()
