r"""Calcium oscillations of the Li--Rinzel astrocyte at constant IP3.

With IP3 held constant (``IP3 = IP3_0`` and no input, so its equation is at rest), the
calcium subsystem ``(Ca_astro, h_IP3R)`` is a planar ODE. Its unique steady state loses
stability in two Hopf bifurcations; between them calcium oscillates (Li & Rinzel 1994).
This module gives the steady state, the eigenvalues of its Jacobian, the Hopf points, and
the amplitude/period of a simulated trace (amplitude and frequency encoding of IP3; De
Pittà et al. 2009). Concentrations in µM, time in ms (rates in 1/ms), as the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .li_rinzel import LiRinzelParams, LiRinzelState, li_rinzel_vector_field

__all__ = ["steady_state", "steady_state_eigenvalues", "hopf_points", "oscillation_features"]


def _h_inf(params, ip3, ca):
    alpha = params.k_IP3R * params.Kd_inh * (ip3 + params.Kd_IP3_1) / (ip3 + params.Kd_IP3_2)
    return alpha / (alpha + params.k_IP3R * ca)


def _rhs2(y, ip3, params):
    d = li_rinzel_vector_field(0.0, LiRinzelState(ip3, y[0], y[1]), params)
    return jnp.stack([d.Ca_astro, d.h_IP3R])


def steady_state(params: LiRinzelParams, IP3, iters: int = 200):
    """Steady state ``(Ca_astro, h_IP3R)`` at constant ``IP3`` (µM).

    ``h_IP3R`` is eliminated (``dh/dt = 0``) and ``dCa/dt`` as a function of calcium is
    bisected on ``[0, Ca_tot]`` (positive at 0: ER leak; negative at ``Ca_tot``: empty ER and
    pumping). jit/vmap-able; differentiable only through the final point, not the bisection.
    """
    ip3 = jnp.asarray(IP3, params.Ca_tot.dtype)

    def g(ca):
        return _rhs2(jnp.stack([ca, _h_inf(params, ip3, ca)]), ip3, params)[0]

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        pos = g(mid) > 0
        return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(ip3), jnp.broadcast_to(params.Ca_tot, ip3.shape)))
    ca = 0.5 * (lo + hi)
    return ca, _h_inf(params, ip3, ca)


def steady_state_eigenvalues(params: LiRinzelParams, IP3):
    """The two (complex) eigenvalues (1/ms) of the Jacobian of ``(Ca_astro, h_IP3R)`` at the
    steady state for constant ``IP3``. Oscillations set in where their real part crosses 0."""
    ca, h = steady_state(params, IP3)
    ip3 = jnp.asarray(IP3, params.Ca_tot.dtype)
    J = jax.jacfwd(_rhs2)(jnp.stack([ca, h]), ip3, params)
    tr = J[0, 0] + J[1, 1]
    det = J[0, 0] * J[1, 1] - J[0, 1] * J[1, 0]
    disc = jnp.sqrt((tr * tr / 4 - det).astype(jnp.complex128 if tr.dtype == jnp.float64 else jnp.complex64))
    return jnp.stack([tr / 2 + disc, tr / 2 - disc])


def hopf_points(params: LiRinzelParams, lo=0.0, hi=3.0, n=601, tol=1e-10):
    """IP3 values (µM, sorted numpy array) in ``[lo, hi]`` where the real part of the steady
    state's eigenvalues changes sign: grid of ``n`` points, each bracket refined by bisection."""
    dtype = params.Ca_tot.dtype
    g = jax.jit(lambda x: jnp.max(steady_state_eigenvalues(params, x).real))  # one compile, scalar calls

    def re(x):
        return float(g(jnp.asarray(x, dtype)))

    grid = np.linspace(lo, hi, n)
    vals = np.array([re(x) for x in grid])
    out = []
    for i in np.nonzero(np.sign(vals[:-1]) != np.sign(vals[1:]))[0]:
        a, b = grid[i], grid[i + 1]
        sa = np.sign(vals[i])
        while b - a > tol:
            m = 0.5 * (a + b)
            if np.sign(re(m)) == sa:
                a = m
            else:
                b = m
        out.append(0.5 * (a + b))
    return np.asarray(out)


def oscillation_features(ts, ca, *, min_amplitude=1e-3):
    """Amplitude (max - min, µM), number of peaks, mean period (ms) and frequency (Hz) of a
    calcium trace (numpy, host side). A peak is a local maximum above the trace's midrange;
    the period is the mean interval between consecutive peaks (NaN with fewer than 2 peaks
    or an amplitude below ``min_amplitude``)."""
    ts = np.asarray(ts, float)
    ca = np.asarray(ca, float)
    amp = float(ca.max() - ca.min())
    if amp < min_amplitude:
        return {"amplitude": amp, "n_peaks": 0, "period_ms": float("nan"), "frequency_hz": float("nan")}
    mid = 0.5 * (ca.max() + ca.min())
    is_peak = (ca[1:-1] > ca[:-2]) & (ca[1:-1] >= ca[2:]) & (ca[1:-1] > mid)
    t_peaks = ts[1:-1][is_peak]
    period = float(np.mean(np.diff(t_peaks))) if t_peaks.size >= 2 else float("nan")
    return {
        "amplitude": amp,
        "n_peaks": int(t_peaks.size),
        "period_ms": period,
        "frequency_hz": 1000.0 / period if np.isfinite(period) else float("nan"),  # ms -> s
    }
