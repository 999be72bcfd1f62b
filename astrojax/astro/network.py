r"""One attention head whose astrocyte is the Li--Rinzel calcium model (:mod:`astrojax.astro.li_rinzel`).

The rate astrocyte of :mod:`astrojax.dynamics` integrates presynaptic activity in a
"process calcium" ``p`` and responds with ``a = p . h``. Here each of the ``m`` astrocyte
processes is a Li--Rinzel compartment (NEST's ``astrocyte_lr_1994``: IP3, Ca_astro,
h_IP3R): hidden-neuron activity produces IP3, IP3 releases calcium from the ER, and the
calcium excess releases a gliotransmitter that shunts the output neurons. Time is in
**ms** throughout (neurons: ``tau_h``, ``tau_y`` of milliseconds; astrocyte: ``tau_IP3``
of seconds, calcium relaxation of 0.1--20 s); a token window lasts ``window`` ms.

Episode (bidirectional protocol: ``T`` write windows, then ``T`` read windows). With
``phi`` a positive feature map of the ``D**-1/4``-scaled query/key:

- **Hidden neurons** (``m``), divisively normalised to mean rate 1:
  ``tau_h dh/dt = f - h`` with ``f = m softmax(log phi(k_t))`` in write window ``t`` and
  ``f = m softmax(log phi(q_t))`` in read window ``t``.
- **IP3 production** (write windows only): process ``p`` receives the synaptic drive
  ``J_p = nu w_t h_p(t)`` (weight per ms; ``w_t = |phi(k_t)|_1 / max_tau |phi(k_tau)|_1``,
  the key's total drive relative to the strongest key -- a presynaptic gain), so
  ``dIP3_p/dt = (IP3_0 - IP3_p)/tau_IP3 + delta_IP3 J_p`` (NEST's equation, rate input).
- **Calcium** of every process: NEST's Li--Rinzel equations driven by its own ``IP3_p(t)``,
  from rest.
- **Gliotransmitter** (the astrocyte output): ``a(t) = (1/T) sum_p h_p(t) z_p(t) / (chi
  delta_IP3 nu window m)``, ``z_p = max(Ca_p - Ca_rest, 0)``: calcium above rest gated by
  the process's synaptic activity, in units of the linear response ``chi = dCa*/dIP3`` at
  rest (steady state of calcium and ``h_IP3R``).
- **Hebbian synapses** ``H = sum_t w_t v_t (x) I_t`` (``I_t = integral of h`` over write window
  ``t``) and **outputs** shunted by the astrocyte (read windows):
  ``tau_y dy/dt = eta (1/T) H h / (window m) - a y``.

**When it computes attention.** If (i) the IP3 increments stay in the linear range of
calcium (below the oscillation threshold, small against ``Kd_IP3_1``), (ii) IP3 does not
decay over the episode (``tau_IP3 >> 2 T window``), (iii) calcium has settled to its steady
state for the current IP3 when it is read (the read phase is long against the calcium and
``h_IP3R`` relaxation, seconds to tens of seconds), and (iv) the neurons are fast
(``tau_h, tau_y << window``), then ``z_p = chi (IP3_p - IP3_0)``, ``IP3_p - IP3_0 =
delta_IP3 nu window sum_t w_t f_{t,p}``, and at the end of read window ``t``::

    a_t = phi(q_t) . sum_tau phi(k_tau) * m / (T M |phi(q_t)|_1),    M = max_tau |phi(k_tau)|_1
    y_t = eta * sum_tau v_tau phi(q_t).phi(k_tau) / sum_tau phi(q_t).phi(k_tau)

i.e. random-feature attention, and ``log_a`` (``a`` times ``T M |phi(q)|_1 / m``) is its
normaliser. Outside (i)--(iii) the response is a nonlinear, history-dependent function of
the keys; ``experiments/li_rinzel/attention.py`` measures how far.

**Integration.** ``h``, IP3 and ``H`` are linear with piecewise-constant drive and are
solved exactly (closed forms per window, a ``lax.scan`` over windows). Only ``(Ca_astro,
h_IP3R)`` is nonlinear and stiff; each process is an independent two-variable system, so
it is solved by ``jax.vmap`` of one Diffrax solve per process (default ``Kvaerno5``, an
implicit ESDIRK method: its Newton solves use 2x2 Jacobians -- the structure of the
network, never a dense Jacobian of the whole state). The output's shunting equation is
linear in ``y`` for a given ``a(t)`` and is advanced by exact exponential steps on a mesh of
``n_mesh`` sub-intervals per read window, graded toward both ends (Chebyshev points: ``h``
changes on ``tau_h`` after the start, the read-out is taken at the end), with ``a`` and the drive at the sub-interval midpoints.
jit, vmap and grad apply (reverse mode through Diffrax's checkpointed adjoint).
"""

from __future__ import annotations

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from .._validate import check_int, check_positive, fourth_root_scale
from .fit_imaging import rest_state
from .li_rinzel import LiRinzelParams, LiRinzelState, li_rinzel_vector_field

__all__ = ["LiRinzelHeadParams", "LiRinzelMethod", "LiRinzelHeadSolution", "solve_li_rinzel_head",
           "LiRinzelHead", "linear_response"]


class LiRinzelHeadParams(eqx.Module):
    """Parameters of the head besides the feature map (times in ms).

    ``astro``: :class:`LiRinzelParams` of every process (NEST's defaults); ``tau_h``
    hidden-neuron time constant (10 ms); ``tau_y`` output-neuron time constant (20 ms);
    ``nu`` synaptic drive of IP3 per unit hidden rate (weight per ms; 0.002: increments of
    about ``0.0004 T`` µM per process at ``window`` = 1 s); ``eta`` output gain (1);
    ``window`` token window (1000 ms).
    """

    astro: LiRinzelParams
    tau_h: jax.Array
    tau_y: jax.Array
    nu: jax.Array
    eta: jax.Array
    window: jax.Array

    def __init__(self, astro: LiRinzelParams | None = None, tau_h=10.0, tau_y=20.0, nu=0.002, eta=1.0,
                 window=1000.0, dtype=None):
        dtype = dtype or jnp.result_type(float)
        self.astro = (LiRinzelParams(dtype=dtype) if astro is None else astro).astype(dtype)
        for n, x in dict(tau_h=tau_h, tau_y=tau_y, nu=nu, eta=eta, window=window).items():
            check_positive(n, x)
            setattr(self, n, jnp.asarray(x, dtype))


class LiRinzelMethod(eqx.Module):
    """How :func:`solve_li_rinzel_head` integrates the calcium.

    ``solver``: a Diffrax solver (default ``Kvaerno5()``, implicit); ``adaptive``: PID
    control with ``rtol``/``atol`` and a step boundary at every window edge, else
    ``steps_per_window`` constant steps; ``n_mesh``: sub-intervals per read window for the
    shunted outputs; ``max_steps``: Diffrax budget per process.
    """

    solver: dfx.AbstractSolver = dfx.Kvaerno5()
    adaptive: bool = eqx.field(static=True, default=True)
    rtol: float = eqx.field(static=True, default=1e-7)
    atol: float = eqx.field(static=True, default=1e-10)
    steps_per_window: int = eqx.field(static=True, default=8)
    n_mesh: int = eqx.field(static=True, default=16)
    max_steps: int = eqx.field(static=True, default=16384)

    def __post_init__(self):
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_int("steps_per_window", self.steps_per_window)
        check_int("n_mesh", self.n_mesh)
        check_int("max_steps", self.max_steps)


class LiRinzelHeadSolution(eqx.Module):
    """``y (T, Dv)`` and ``a (T,)`` at the end of each read window; ``log_a (T,)`` the
    normalised response (the attention normaliser in the linear regime); ``ys``: the
    process states ``(IP3, Ca_astro, h_IP3R)``, each ``(len(ts), m)``, at the extra sample
    times ``ts`` (or None); ``ok``: every calcium solve succeeded; ``num_steps`` (max over
    processes); ``chi``: the linear response dCa*/dIP3 at rest (µM/µM)."""

    y: jax.Array
    a: jax.Array
    log_a: jax.Array
    ys: tuple | None
    ok: jax.Array
    num_steps: jax.Array
    chi: jax.Array


def linear_response(astro: LiRinzelParams):
    """``(Ca_rest, h_rest, chi)``: the resting state at ``IP3_0`` and ``chi = dCa*/dIP3`` there
    (steady state of calcium and ``h_IP3R``; implicit-function derivative)."""
    def ca_of(ip3):
        s = rest_state(eqx.tree_at(lambda p: p.IP3_0, astro, ip3))
        return s.Ca_astro, s.h_IP3R

    (ca, h), (chi, _) = jax.jvp(ca_of, (astro.IP3_0,), (jnp.ones_like(astro.IP3_0),))
    return ca, h, chi


def _kern(s, tau, tau_h):
    """``int_0^s e^{-(s-r)/tau} e^{-r/tau_h} dr`` (stable for tau close to tau_h)."""
    d = 1.0 / tau_h - 1.0 / tau
    x = d * s
    small = jnp.abs(x) < 1e-6
    return jnp.exp(-s / tau) * jnp.where(small, s * (1 - 0.5 * x), -jnp.expm1(-jnp.where(small, 1.0, x)) / jnp.where(small, 1.0, d))


def _mesh(n, dtype):
    """Sub-interval edges (fractions of a window), graded toward both ends (Chebyshev points):
    fine at the start, where ``h`` changes on ``tau_h``, and at the end, where the read-out is taken."""
    return 0.5 * (1.0 - jnp.cos(jnp.pi * jnp.arange(n + 1, dtype=dtype) / n))


def solve_li_rinzel_head(params: LiRinzelHeadParams, log_phi_k, log_phi_q, v, method: LiRinzelMethod = LiRinzelMethod(),
                         ts=None) -> LiRinzelHeadSolution:
    """Simulate one head (bidirectional protocol) from its log feature drives ``(T, m)``.

    ``ts``: optional extra sample times (ms, within ``[0, 2 T window]``) at which the
    process states are returned in ``ys``. jit/vmap/grad-able.
    """
    T, m = log_phi_k.shape
    dtype = log_phi_k.dtype
    P = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    A = P.astro
    L = P.window
    lse_k = jax.nn.logsumexp(log_phi_k, axis=-1)
    lse_q = jax.nn.logsumexp(log_phi_q, axis=-1)
    log_M = jnp.max(lse_k)
    w = jnp.exp(lse_k - log_M)  # (T,) presynaptic gain, max 1
    f = m * jnp.exp(jnp.concatenate([log_phi_k - lse_k[:, None], log_phi_q - lse_q[:, None]]))  # (2T, m)
    wj = jnp.concatenate([w, jnp.zeros((T,), dtype)])  # write weight per window
    eh = jnp.exp(-L / P.tau_h)
    eu = jnp.exp(-L / A.tau_IP3)
    gain = A.delta_IP3 * P.nu

    def window_step(carry, x):
        h0, u0 = carry
        fj, wjj = x
        I = fj * L + (h0 - fj) * P.tau_h * (-jnp.expm1(-L / P.tau_h))  # integral of h over the window
        u1 = u0 * eu + gain * wjj * (fj * A.tau_IP3 * (-jnp.expm1(-L / A.tau_IP3)) + (h0 - fj) * _kern(L, A.tau_IP3, P.tau_h))
        h1 = fj + (h0 - fj) * eh
        return (h1, u1), (h0, u0, I)

    zero = jnp.zeros((m,), dtype)
    _, (h0s, u0s, Is) = jax.lax.scan(window_step, (zero, zero), (f, wj))  # per window start values (2T, m)

    ca_rest, h_rest, chi = linear_response(A)
    J = 2 * T
    t_end = J * L

    def ip3_at(t, fp, h0p, u0p, wjv):
        j = jnp.clip(jnp.floor(t / L).astype(jnp.int32), 0, J - 1)
        s = t - j * L
        fj, h0, u0, ww = fp[j], h0p[j], u0p[j], wjv[j]
        u = u0 * jnp.exp(-s / A.tau_IP3) + gain * ww * (fj * A.tau_IP3 * (-jnp.expm1(-s / A.tau_IP3))
                                                        + (h0 - fj) * _kern(s, A.tau_IP3, P.tau_h))
        return A.IP3_0 + u

    # save times: per read window, midpoints of the graded mesh and the window end
    e = _mesh(method.n_mesh, dtype)
    mids = 0.5 * (e[1:] + e[:-1])
    starts = (T + jnp.arange(T, dtype=dtype)) * L
    save_read = (starts[:, None] + L * jnp.concatenate([mids, jnp.ones((1,), dtype)])[None, :]).reshape(-1)
    n_read = save_read.shape[0]
    save = save_read if ts is None else jnp.concatenate([save_read, jnp.asarray(ts, dtype)])
    order = jnp.argsort(save)
    inv = jnp.argsort(order)
    save_sorted = save[order]

    def one_process(fp, h0p, u0p):
        def vf(t, y, args):
            ca, hr = y
            ip3 = ip3_at(t, fp, h0p, u0p, wj)
            d = li_rinzel_vector_field(t, LiRinzelState(ip3, ca, hr), A)
            return d.Ca_astro, d.h_IP3R

        if method.adaptive:
            edges = jnp.arange(1, J, dtype=dtype) * L
            ctrl = dfx.PIDController(rtol=method.rtol, atol=method.atol, jump_ts=edges)
            dt0 = None
        else:
            ctrl = dfx.ConstantStepSize()
            dt0 = L / method.steps_per_window
        solver = method.solver
        if not method.adaptive and hasattr(solver, "root_finder"):
            # constant steps: the implicit solver's Newton iteration needs its own tolerances
            solver = eqx.tree_at(lambda s: s.root_finder, solver,
                                 dfx.VeryChord(rtol=method.rtol, atol=method.atol, norm=optx.max_norm))
        sol = dfx.diffeqsolve(dfx.ODETerm(vf), solver, jnp.asarray(0.0, dtype), t_end, dt0, (ca_rest, h_rest),
                              saveat=dfx.SaveAt(ts=save_sorted), stepsize_controller=ctrl, max_steps=method.max_steps,
                              throw=False)
        ca, hr = sol.ys
        ip3 = jax.vmap(lambda t: ip3_at(t, fp, h0p, u0p, wj))(save_sorted)
        return ip3[inv], ca[inv], hr[inv], sol.result == dfx.RESULTS.successful, sol.stats["num_steps"]

    ip3_s, ca_s, hr_s, ok, nsteps = jax.vmap(one_process, in_axes=(1, 1, 1), out_axes=(1, 1, 1, 0, 0))(f, h0s, u0s)
    ca_read = jnp.clip(ca_s[:n_read], 0.0, A.Ca_tot).reshape(T, method.n_mesh + 1, m)
    z = jnp.maximum(ca_read - ca_rest, 0.0)

    # hidden rates at the save points of read window r: f_r + (h0_r - f_r) e^{-s/tau_h}
    s_frac = jnp.concatenate([mids, jnp.ones((1,), dtype)])
    fr, h0r = f[T:], h0s[T:]
    h_read = fr[:, None, :] + (h0r - fr)[:, None, :] * jnp.exp(-L * s_frac[None, :, None] / P.tau_h)  # (T, n+1, m)
    norm_a = T * chi * gain * L * m
    a_mesh = jnp.einsum("tim,tim->ti", h_read, z) / norm_a  # (T, n+1)
    H = jnp.einsum("t,td,tm->dm", w, v.astype(dtype), Is[:T])  # (Dv, m)
    B_mesh = P.eta * jnp.einsum("dm,tim->tid", H, h_read) / (T * L * m)  # (T, n+1, Dv)
    dts = L * jnp.diff(e)  # (n,)

    def read_window(y, x):
        a_i, B_i = x  # (n+1,), (n+1, Dv): mesh midpoints then the window end

        def sub(y, z2):
            a, B, dt = z2
            xx = a * dt / P.tau_y
            small = xx < 1e-8
            phi1 = jnp.where(small, 1.0 - 0.5 * xx, -jnp.expm1(-jnp.where(small, 1.0, xx)) / jnp.where(small, 1.0, xx))
            return y * jnp.exp(-xx) + B * (dt / P.tau_y) * phi1, None

        y, _ = jax.lax.scan(sub, y, (a_i[:-1], B_i[:-1], dts))
        return y, y

    _, y_end = jax.lax.scan(read_window, jnp.zeros((v.shape[1],), dtype), (a_mesh, B_mesh))
    a_end = a_mesh[:, -1]
    pos = a_end > 0
    log_a = jnp.where(pos, jnp.log(jnp.where(pos, a_end, 1.0)), -jnp.inf) + math.log(T) + log_M + lse_q - math.log(m)
    ys = None
    if ts is not None:
        ys = (ip3_s[n_read:], jnp.clip(ca_s[n_read:], 0.0, A.Ca_tot), hr_s[n_read:])
    return LiRinzelHeadSolution(y=y_end, a=a_end, log_a=log_a, ys=ys, ok=jnp.all(ok), num_steps=jnp.max(nsteps),
                                chi=chi)


class LiRinzelHead(eqx.Module):
    """An attention head with the Li--Rinzel astrocyte: ``head(q, k, v) -> (y, a_norm)``
    (``a_norm = exp(log_a)``, comparable with the softmax normaliser). ``fmap``: a
    positive :class:`~astrojax.features.AbstractFeatureMap` (e.g. ``LearnedExpFeatures``);
    ``params``: :class:`LiRinzelHeadParams`; ``method``: :class:`LiRinzelMethod`."""

    fmap: eqx.Module
    params: LiRinzelHeadParams
    method: LiRinzelMethod = LiRinzelMethod()

    def drives(self, q, k):
        s = fourth_root_scale(q.shape[-1])
        if not getattr(self.fmap, "positive", False):
            raise ValueError("the Li-Rinzel head needs a positive feature map (hidden rates are non-negative)")
        return self.fmap.log_features(k * s), self.fmap.log_features(q * s)

    def solve(self, q, k, v, ts=None) -> LiRinzelHeadSolution:
        lk, lq = self.drives(q, k)
        return solve_li_rinzel_head(self.params, lk, lq, v, self.method, ts)

    def __call__(self, q, k, v):
        sol = self.solve(q, k, v)
        return sol.y, jnp.exp(sol.log_a)
