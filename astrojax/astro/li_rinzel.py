r"""Li--Rinzel astrocyte: IP3-driven calcium release from the ER, as NEST's ``astrocyte_lr_1994``.

A model of astrocytic calcium dynamics first proposed by Li & Rinzel (1994), a
two-variable reduction of the De Young & Keizer (1992) IP3-receptor model, with the
input (synaptic drive of IP3) and output (slow inward current, SIC) of Nadkarni &
Jung (2003), exactly as implemented by NEST's ``astrocyte_lr_1994`` (NEST >= 3.7).
Same state variables, parameter names, units and defaults, so a parameter dictionary
can be passed to either simulator.

Units (as NEST): time in **ms**, concentrations in **µM**, rates in 1/ms. A user with
times in seconds converts explicitly: ``t_ms = 1000 * t_s`` (and rates per second
divided by 1000); nothing here converts silently.

State
-----

========  ========  ==========================================================  =============
name      unit      meaning                                                     initial value
========  ========  ==========================================================  =============
IP3       µM        inositol 1,4,5-trisphosphate concentration in the cytosol   ``IP3_0``
Ca_astro  µM        calcium concentration in the astrocytic cytosol             0.073
h_IP3R    1         fraction of IP3 receptors not yet inactivated by calcium    0.793
========  ========  ==========================================================  =============

Equations
---------

With ``C = clip(Ca_astro, 0, Ca_tot)`` (NEST keeps calcium within these limits, inside
the vector field and after every step), ``Ca_ER = (Ca_tot - C) / ratio_ER_cyt``::

    dIP3/dt     = (IP3_0 - IP3) / tau_IP3 + delta_IP3 * J_syn(t)
    dCa_astro/dt = J_channel - J_pump + J_leak (+ J_noise)
    dh_IP3R/dt  = alpha_h (1 - h_IP3R) - beta_h h_IP3R

    J_channel = ratio_ER_cyt * rate_IP3R * m_inf^3 * n_inf^3 * h_IP3R^3 * (Ca_ER - C)
    J_leak    = ratio_ER_cyt * rate_L * (Ca_ER - C)
    J_pump    = rate_SERCA * C^2 / (Km_SERCA^2 + C^2)
    m_inf     = IP3 / (IP3 + Kd_IP3_1)
    n_inf     = C / (C + Kd_act)
    alpha_h   = k_IP3R * Kd_inh * (IP3 + Kd_IP3_1) / (IP3 + Kd_IP3_2)
    beta_h    = k_IP3R * C

Spike input. ``J_syn(t) = sum_k w_k delta(t - t_k)``: each incoming spike of weight
``w_k >= 0`` arriving at ``t_k`` (spike time plus synaptic delay in NEST) increments
``IP3`` instantaneously by ``delta_IP3 * w_k``; spikes arriving together add. State
traces are right-continuous: the value at ``t_k`` is the value after the jump (what
NEST's multimeter records at ``t_k``). A continuous, piecewise-constant drive
``J_syn(t)`` (a rate, weight per ms, e.g. the mean-field limit of many synapses) is
supported as well (:class:`RateInput`).

Output. The slow inward current sent to neurons (``sic_connection`` in NEST)::

    I_SIC = SIC_scale * log(y) * H(log y),   y = (Ca_astro - SIC_th) / 1 nM

i.e. zero until calcium exceeds ``SIC_th`` by 1 nM, then logarithmic in the excess.

How it is integrated
--------------------

The IP3 equation is linear and does not depend on calcium, so :func:`simulate_li_rinzel`
uses its exact solution (exponential relaxation to ``IP3_0``, jumps of ``delta_IP3 w_k``
at the spikes) and integrates the two remaining variables with Diffrax, using the same
vector field (:func:`li_rinzel_vector_field`). Every input event is a step boundary
(``jump_ts`` of the PID controller): the solver steps to just before each jump and
restarts just after it, so accuracy is not lost at the discontinuities of the vector
field. NEST integrates the same equations with GSL's RKF45 (absolute tolerance 1e-3,
steps bounded by the resolution), applies the spikes at the end of each resolution step
and records right-continuous values; the parity test in the repository measures the
agreement.

Parameters (:class:`LiRinzelParams`)
------------------------------------

=============  ==========  =========  ==========================================================
name           unit        default    meaning
=============  ==========  =========  ==========================================================
Ca_tot         µM          2.0        total free calcium in terms of cytosolic volume (c0)
IP3_0          µM          0.16       baseline IP3 concentration
Kd_IP3_1       µM          0.13       first IP3R dissociation constant of IP3 (d1)
Kd_IP3_2       µM          0.9434     second IP3R dissociation constant of IP3 (d3)
Kd_act         µM          0.08234    IP3R dissociation constant of calcium, activation (d5)
Kd_inh         µM          1.049      IP3R dissociation constant of calcium, inhibition (d2)
Km_SERCA       µM          0.1        half-activation constant of the SERCA pump (k3)
SIC_scale      1           1.0        scale of the SIC output
SIC_th         µM          0.19669    calcium threshold for SIC
delta_IP3      µM          0.0002     IP3 increase per unit of synaptic weight
k_IP3R         1/(µM ms)   0.0002     IP3R binding constant for calcium inhibition (a2)
rate_IP3R      1/ms        0.006      maximal rate of calcium release via IP3R (v1)
rate_L         1/ms        0.00011    rate constant of calcium leak from the ER (v2)
rate_SERCA     µM/ms       0.0009     maximal rate of calcium uptake by SERCA (v3)
ratio_ER_cyt   1           0.185      ratio of ER to cytosol volumes (c1)
tau_IP3        ms          7142.0     time constant of IP3 decay to ``IP3_0``
=============  ==========  =========  ==========================================================

The symbols in brackets are Li & Rinzel's (1994) / De Young & Keizer's (1992).

References
----------

- Y.-X. Li, J. Rinzel (1994). Equations for InsP3 receptor-mediated [Ca2+]i oscillations
  derived from a detailed kinetic model: a Hodgkin-Huxley like formalism. J. Theor. Biol.
  166(4):461-473.
- G. W. De Young, J. Keizer (1992). A single-pool inositol 1,4,5-trisphosphate-receptor-
  based model for agonist-stimulated oscillations in Ca2+ concentration. PNAS 89(20):
  9895-9899.
- S. Nadkarni, P. Jung (2003). Spontaneous oscillations of dressed neurons: a new
  mechanism for epilepsy? Phys. Rev. Lett. 91(26):268101.
- M. De Pittà, M. Goldberg, V. Volman, H. Berry, E. Ben-Jacob (2009). Glutamate
  regulation of calcium and IP3 oscillating and pulsating dynamics in astrocytes.
  J. Biol. Phys. 35(4):383-411.
- NEST Simulator documentation, model ``astrocyte_lr_1994`` (NEST 3.10).
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..integrate import RESULTS as _CoreRESULTS
from .._validate import as_array, check_finite, check_nonnegative, check_positive, is_concrete

__all__ = [
    "LiRinzelParams",
    "LiRinzelState",
    "SpikeInput",
    "RateInput",
    "LiRinzelSolution",
    "RESULTS",
    "li_rinzel_vector_field",
    "sic_current",
    "ip3_trace",
    "simulate_li_rinzel",
    "PARAM_NAMES",
    "NEST_DEFAULTS",
    "NEST_INITIAL_STATE",
]

#: NEST 3.10 defaults of ``astrocyte_lr_1994`` (µM, ms).
NEST_DEFAULTS = {
    "Ca_tot": 2.0,
    "IP3_0": 0.16,
    "Kd_IP3_1": 0.13,
    "Kd_IP3_2": 0.9434,
    "Kd_act": 0.08234,
    "Kd_inh": 1.049,
    "Km_SERCA": 0.1,
    "SIC_scale": 1.0,
    "SIC_th": 0.19669,
    "delta_IP3": 0.0002,
    "k_IP3R": 0.0002,
    "rate_IP3R": 0.006,
    "rate_L": 0.00011,
    "rate_SERCA": 0.0009,
    "ratio_ER_cyt": 0.185,
    "tau_IP3": 7142.0,
}
#: NEST's initial state besides ``IP3 = IP3_0`` (µM, 1).
NEST_INITIAL_STATE = {"Ca_astro": 0.073, "h_IP3R": 0.793}
PARAM_NAMES = tuple(NEST_DEFAULTS)

# NEST's admissible ranges (astrocyte_lr_1994::Parameters_::set).
_POSITIVE = ("Ca_tot", "Kd_act", "Kd_IP3_1", "Kd_IP3_2", "Km_SERCA", "ratio_ER_cyt", "SIC_scale", "tau_IP3")
_NONNEGATIVE = ("IP3_0", "Kd_inh", "delta_IP3", "k_IP3R", "SIC_th", "rate_L", "rate_IP3R", "rate_SERCA")


class LiRinzelParams(eqx.Module):
    """Parameters of the Li--Rinzel astrocyte, named, unit-ed and defaulted as NEST's
    ``astrocyte_lr_1994`` (table in :mod:`astrojax.astro.li_rinzel`).

    Concrete values are checked against NEST's admissible ranges (positive:
    ``Ca_tot, Kd_act, Kd_IP3_1, Kd_IP3_2, Km_SERCA, ratio_ER_cyt, SIC_scale, tau_IP3``;
    non-negative: the rest). Every field is a JAX array, so the module can be
    differentiated (``eqx.filter_grad``) and batched (``jax.vmap`` over a stacked
    instance). ``LiRinzelParams.from_nest(d)`` accepts NEST's status dictionary.
    """

    Ca_tot: jax.Array
    IP3_0: jax.Array
    Kd_IP3_1: jax.Array
    Kd_IP3_2: jax.Array
    Kd_act: jax.Array
    Kd_inh: jax.Array
    Km_SERCA: jax.Array
    SIC_scale: jax.Array
    SIC_th: jax.Array
    delta_IP3: jax.Array
    k_IP3R: jax.Array
    rate_IP3R: jax.Array
    rate_L: jax.Array
    rate_SERCA: jax.Array
    ratio_ER_cyt: jax.Array
    tau_IP3: jax.Array

    def __init__(
        self,
        Ca_tot=2.0,
        IP3_0=0.16,
        Kd_IP3_1=0.13,
        Kd_IP3_2=0.9434,
        Kd_act=0.08234,
        Kd_inh=1.049,
        Km_SERCA=0.1,
        SIC_scale=1.0,
        SIC_th=0.19669,
        delta_IP3=0.0002,
        k_IP3R=0.0002,
        rate_IP3R=0.006,
        rate_L=0.00011,
        rate_SERCA=0.0009,
        ratio_ER_cyt=0.185,
        tau_IP3=7142.0,
        dtype=None,
    ):
        dtype = dtype or jnp.result_type(float)
        vals = dict(locals())
        for name in PARAM_NAMES:
            x = vals[name]
            (check_positive if name in _POSITIVE else check_nonnegative)(name, x)
            setattr(self, name, jnp.asarray(x, dtype))

    @classmethod
    def from_nest(cls, status: dict, dtype=None) -> "LiRinzelParams":
        """Parameters from a NEST status dictionary (extra keys such as state are ignored)."""
        return cls(**{k: status[k] for k in PARAM_NAMES if k in status}, dtype=dtype)

    def to_nest(self) -> dict:
        """The parameters as a NEST status dictionary of Python floats (concrete values only)."""
        return {k: float(getattr(self, k)) for k in PARAM_NAMES}

    def replace(self, **kw) -> "LiRinzelParams":
        """A copy with some parameters changed (validated)."""
        unknown = set(kw) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown parameter name(s) {sorted(unknown)}; expected some of {PARAM_NAMES}")
        vals = {n: getattr(self, n) for n in PARAM_NAMES}
        vals.update(kw)
        return LiRinzelParams(**vals, dtype=self.Ca_tot.dtype)

    def astype(self, dtype) -> "LiRinzelParams":
        return jax.tree.map(lambda x: jnp.asarray(x, dtype), self)


class LiRinzelState(eqx.Module):
    """State of one (or, with array fields, several) Li--Rinzel astrocytes (µM, µM, 1)."""

    IP3: jax.Array
    Ca_astro: jax.Array
    h_IP3R: jax.Array

    @classmethod
    def initial(cls, params: LiRinzelParams) -> "LiRinzelState":
        """NEST's initial state: ``IP3 = IP3_0``, ``Ca_astro = 0.073``, ``h_IP3R = 0.793``."""
        dt = params.IP3_0.dtype
        return cls(
            IP3=params.IP3_0,
            Ca_astro=jnp.asarray(NEST_INITIAL_STATE["Ca_astro"], dt),
            h_IP3R=jnp.asarray(NEST_INITIAL_STATE["h_IP3R"], dt),
        )


def li_rinzel_vector_field(t, y: LiRinzelState, params: LiRinzelParams, J_syn=0.0, J_noise=0.0) -> LiRinzelState:
    """Time derivative of the state (µM/ms, µM/ms, 1/ms), NEST's ``astrocyte_lr_1994_dynamics``.

    ``J_syn`` is a continuous synaptic drive (weight per ms; spikes are impulses, applied
    as jumps by :func:`simulate_li_rinzel`, not through this argument); ``J_noise`` a
    calcium current (µM/ms) added to ``dCa_astro/dt`` (NEST's current input).
    """
    p = params
    ip3, h = y.IP3, y.h_IP3R
    ca = jnp.clip(y.Ca_astro, 0.0, p.Ca_tot)  # NEST keeps calcium within [0, Ca_tot]
    alpha_h = p.k_IP3R * p.Kd_inh * (ip3 + p.Kd_IP3_1) / (ip3 + p.Kd_IP3_2)
    beta_h = p.k_IP3R * ca
    J_pump = p.rate_SERCA * ca**2 / (p.Km_SERCA**2 + ca**2)
    m_inf = ip3 / (ip3 + p.Kd_IP3_1)
    n_inf = ca / (ca + p.Kd_act)
    ca_er = (p.Ca_tot - ca) / p.ratio_ER_cyt
    J_leak = p.ratio_ER_cyt * p.rate_L * (ca_er - ca)
    J_channel = p.ratio_ER_cyt * p.rate_IP3R * m_inf**3 * n_inf**3 * h**3 * (ca_er - ca)
    return LiRinzelState(
        IP3=(p.IP3_0 - ip3) / p.tau_IP3 + p.delta_IP3 * J_syn,
        Ca_astro=J_channel - J_pump + J_leak + J_noise,
        h_IP3R=alpha_h * (1.0 - h) - beta_h * h,
    )


def sic_current(Ca_astro, params: LiRinzelParams):
    """NEST's SIC output, ``SIC_scale * log((Ca_astro - SIC_th) / 1 nM)`` above 1 nM excess, else 0.

    Continuous in ``Ca_astro`` (``log 1 = 0`` at the threshold), so it can be differentiated;
    the gradient is zero below threshold.
    """
    excess_nM = (Ca_astro - params.SIC_th) * 1000.0
    above = excess_nM > 1.0
    return jnp.where(above, jnp.log(jnp.where(above, excess_nM, 1.0)) * params.SIC_scale, 0.0)


class SpikeInput(eqx.Module):
    """Spikes arriving at the astrocyte: arrival times (ms; spike time + synaptic delay) and
    weights (>= 0; NEST rejects negative weights). Each increments IP3 by ``delta_IP3 * w``.

    ``times`` has shape ``(K,)`` for one astrocyte, or ``(n, K)`` for a batch to ``jax.vmap``
    over. For static shapes pad with any time after the end of the simulation (or weight 0);
    ``SpikeInput.from_lists`` stacks ragged trains that way. Times need not be sorted.
    """

    times: jax.Array
    weights: jax.Array

    def __init__(self, times, weights=1.0):
        times = as_array("times", times)
        if times.ndim not in (1, 2):
            raise ValueError(
                f"`times` must be a 1-D array of spike arrival times (ms), or 2-D (astrocytes, spikes) for vmap; "
                f"got shape {times.shape}"
            )
        weights = jnp.broadcast_to(jnp.asarray(weights, times.dtype), times.shape) if np.ndim(weights) == 0 \
            else as_array("weights", weights)
        if weights.shape != times.shape:
            raise ValueError(f"`weights` must be a scalar or have the shape of `times` {times.shape}, got {weights.shape}")
        check_finite("times", times)
        check_nonnegative("weights", weights)
        self.times = times
        self.weights = weights.astype(times.dtype)

    @classmethod
    def from_lists(cls, trains, weights=1.0, dtype=None) -> "SpikeInput":
        """Stack ragged spike trains (list of 1-D arrays, ms) into an ``(n, K)`` batch padded
        with huge times (``finfo.max / 4``, after any simulation end) and zero weights.
        ``weights``: a scalar, or one scalar per train."""
        dtype = dtype or jnp.result_type(float)
        K = max(1, max(len(tr) for tr in trains))
        big = float(np.finfo(np.dtype(dtype)).max) / 4
        T = np.full((len(trains), K), big)
        W = np.zeros((len(trains), K))
        for i, tr in enumerate(trains):
            T[i, : len(tr)] = tr
            W[i, : len(tr)] = weights if np.ndim(weights) == 0 else weights[i]
        return cls(jnp.asarray(T, dtype), jnp.asarray(W, dtype))


class RateInput(eqx.Module):
    """Piecewise-constant synaptic drive ``J_syn(t) = rates[j]`` (weight per ms) on
    ``edges[j] <= t < edges[j+1]`` (ms), zero outside. Its IP3 response is exact.
    ``edges`` sorted, shape (n + 1,); ``rates`` shape (n,)."""

    edges: jax.Array
    rates: jax.Array

    def __init__(self, edges, rates):
        edges = as_array("edges", edges, ndim=1)
        rates = as_array("rates", rates, ndim=1)
        if edges.shape[0] != rates.shape[0] + 1:
            raise ValueError(f"`edges` must have one more entry than `rates`, got {edges.shape} and {rates.shape}")
        check_finite("edges", edges)
        check_finite("rates", rates)
        if is_concrete(edges) and bool(np.any(np.diff(np.asarray(edges)) < 0)):
            raise ValueError("`edges` must be sorted (non-decreasing)")
        self.edges = edges
        self.rates = rates.astype(edges.dtype)


class _Knots(eqx.Module):
    """IP3 excess due to one input, exact between knots: on [knots[j], knots[j+1]) it relaxes
    from ``start[j]`` towards ``target[j]`` with time constant ``tau_IP3``; zero before knots[0]."""

    knots: jax.Array
    start: jax.Array
    target: jax.Array

    def __call__(self, t, tau):
        j = jnp.searchsorted(self.knots, t, side="right") - 1
        jc = jnp.clip(j, 0, self.knots.shape[0] - 1)
        u = self.target[jc]
        val = u + (self.start[jc] - u) * jnp.exp(-(t - self.knots[jc]) / tau)
        return jnp.where(j >= 0, val, 0.0)


def _spike_knots(inp: SpikeInput, params: LiRinzelParams, t0, t_end) -> _Knots:
    """Spikes in (t0, t_end]: after spike k the excess is A_k = A_{k-1} exp(-gap/tau) + delta_IP3 w_k."""
    live = (inp.times > t0) & (inp.times <= t_end)
    # Park the other spikes at t_end with zero weight: no inf in exp (no NaN gradients).
    key = jnp.where(live, inp.times, t_end)
    order = jnp.argsort(key)
    tk = key[order]
    wk = (jnp.where(live, inp.weights, 0.0) * params.delta_IP3)[order]
    gaps = jnp.diff(tk, prepend=tk[:1])

    def step(a, x):
        gap, w = x
        a = a * jnp.exp(-gap / params.tau_IP3) + w
        return a, a

    _, A = jax.lax.scan(step, jnp.zeros((), tk.dtype), (gaps, wk))
    return _Knots(tk, A, jnp.zeros_like(A))


def _rate_knots(inp: RateInput, params: LiRinzelParams, t0, t_end) -> _Knots:
    """Piece j relaxes to tau_IP3 delta_IP3 rates[j]; after the last edge, to zero."""
    e = jnp.clip(inp.edges, t0, t_end)  # drive before t0 / after t_end is ignored
    target = jnp.append(params.tau_IP3 * params.delta_IP3 * inp.rates, 0.0)

    def step(a, x):
        gap, u = x
        a = u + (a - u) * jnp.exp(-gap / params.tau_IP3)
        return a, a

    _, A = jax.lax.scan(step, jnp.zeros((), e.dtype), (jnp.diff(e), target[:-1]))
    return _Knots(e, jnp.concatenate([jnp.zeros((1,), e.dtype), A]), target)


def _as_inputs(inputs):
    if inputs is None:
        return ()
    if isinstance(inputs, (SpikeInput, RateInput)):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(i, (SpikeInput, RateInput)) for i in inputs):
        return tuple(inputs)
    raise TypeError(
        "`inputs` must be a SpikeInput, a RateInput, a tuple of them, or None; got " f"{type(inputs).__name__}"
    )


class _IP3(eqx.Module):
    """Exact IP3(t): relaxation of the initial value to IP3_0 plus each input's excess."""

    IP3_0: jax.Array
    IP3_init: jax.Array
    tau: jax.Array
    t0: jax.Array
    parts: tuple

    def __call__(self, t):
        out = self.IP3_0 + (self.IP3_init - self.IP3_0) * jnp.exp(-(t - self.t0) / self.tau)
        for part in self.parts:
            out = out + part(t, self.tau)
        return out


def _make_ip3(params, inputs, t0, t_end, IP3_init) -> _IP3:
    parts = tuple(
        (_spike_knots if isinstance(i, SpikeInput) else _rate_knots)(i, params, t0, t_end) for i in inputs
    )
    return _IP3(params.IP3_0, IP3_init, params.tau_IP3, t0, parts)


def ip3_trace(params: LiRinzelParams, inputs, ts, *, IP3_init=None, t0=0.0):
    """Exact IP3 (µM) at times ``ts`` (ms, >= t0): relaxation of ``IP3_init`` (default
    ``IP3_0``) to ``IP3_0`` plus the response to every input (the IP3 equation is linear)."""
    ts = jnp.asarray(ts)
    t0 = jnp.asarray(t0, ts.dtype)
    ip3_init = params.IP3_0 if IP3_init is None else jnp.asarray(IP3_init, ts.dtype)
    return _make_ip3(params, _as_inputs(inputs), t0, jnp.max(ts), ip3_init)(ts)


class RESULTS(_CoreRESULTS):  # pyright: ignore
    """Result codes of :func:`simulate_li_rinzel`: the core's :class:`astrojax.integrate.RESULTS`
    (every code of the attention network's ``solve``) plus ``solver_failed``.

    Diffrax's result is mapped onto them: ``successful`` -> ``successful``,
    ``max_steps_reached`` -> ``max_steps_reached``, any other Diffrax failure (step size
    below ``dtmin``, a singular or non-converging implicit step, ...) -> ``solver_failed``.
    Non-finite parameters, inputs, ``y0`` or ``ts`` give ``nonfinite_input``; a successful
    solve whose saved values are not finite gives ``solver_failed``. A core code converts
    with ``RESULTS.promote(astrojax.integrate.RESULTS.x)``; Equinox enumerations compare
    only within one class, so compare with ``astrojax.astro.RESULTS.x`` (or use ``.ok``).
    """

    solver_failed = (
        "the Diffrax solver failed (step size underflow, a singular or non-converging implicit step, "
        "or a non-finite solution); `diffrax_result` in Solution.stats has Diffrax's own code"
    )


def _map_diffrax_result(dres, finite_input, finite_output):
    """Diffrax's result (possibly batched) -> :class:`RESULTS` (see its docstring)."""
    ok = dres == dfx.RESULTS.successful
    steps = dres == dfx.RESULTS.max_steps_reached
    out = RESULTS.where(steps, RESULTS.max_steps_reached, RESULTS.solver_failed)
    out = RESULTS.where(ok & finite_output, RESULTS.successful, out)
    return RESULTS.where(finite_input, out, RESULTS.nonfinite_input)


class LiRinzelSolution(eqx.Module):
    """Traces at ``ts`` (ms): ``Ca_astro``, ``IP3`` (µM), ``h_IP3R`` (1), ``SIC`` (NEST's SIC
    output).

    ``result`` is a :class:`RESULTS` code (the core's codes plus ``solver_failed``; Diffrax's
    result mapped onto them). After a failure the samples not reached are NaN (never silently
    wrong values). ``stats``: ``num_steps`` (accepted + rejected solver
    steps), ``num_accepted_steps``, ``num_rejected_steps`` and ``diffrax_result`` (Diffrax's
    own code). ``ok`` is ``result == RESULTS.successful`` (a boolean array under ``vmap``);
    ``num_steps`` is ``stats["num_steps"]``.
    """

    ts: jax.Array
    Ca_astro: jax.Array
    IP3: jax.Array
    h_IP3R: jax.Array
    SIC: jax.Array
    result: RESULTS
    stats: dict

    @property
    def ok(self):
        return self.result == RESULTS.successful

    @property
    def num_steps(self):
        return self.stats["num_steps"]

    @property
    def message(self) -> str:
        """The result's message ('' when successful); concrete, unbatched results only."""
        return RESULTS[self.result]


def _jump_times(inputs, t0, t1, dtype):
    parts = []
    for inp in inputs:
        t = inp.times if isinstance(inp, SpikeInput) else inp.edges
        parts.append(jnp.where((t > t0) & (t < t1), t, t1 + 1.0).astype(dtype))
    if not parts:
        return None
    return jnp.concatenate(parts)


_DEFAULT_TOL = {4: (1e-5, 1e-8), 8: (1e-9, 1e-12)}  # float32, float64: (rtol, atol)


def simulate_li_rinzel(
    params: LiRinzelParams,
    inputs,
    ts,
    *,
    y0: LiRinzelState | None = None,
    t0=0.0,
    solver: dfx.AbstractSolver | None = None,
    rtol=None,
    atol=None,
    pcoeff=0.0,
    icoeff=1.0,
    dt0=None,
    max_steps: int = 200_000,
    adjoint: dfx.AbstractAdjoint | None = None,
) -> LiRinzelSolution:
    """Simulate one Li--Rinzel astrocyte from ``t0`` and return its traces at ``ts`` (ms).

    **Arguments**

    - ``params``: :class:`LiRinzelParams` (NEST's names, units and defaults).
    - ``inputs``: synaptic input driving IP3: a :class:`SpikeInput` (arrival times, weights),
      a :class:`RateInput` (piecewise-constant rate), a tuple of them, or ``None``.
    - ``ts``: sorted 1-D array of save times in ms, all ``>= t0``; its dtype sets the
      precision (float64 needs ``jax.config.update("jax_enable_x64", True)``).
    - ``y0``: initial state (default NEST's: ``IP3_0, 0.073, 0.793``).
    - ``solver``: any Diffrax ODE solver; default ``Tsit5()`` (the system is only mildly
      stiff at NEST's defaults); ``Kvaerno5()`` for stiff parameter sets.
    - ``rtol``, ``atol``: PID controller tolerances; default ``1e-9, 1e-12`` in float64,
      ``1e-5, 1e-8`` in float32. ``pcoeff``, ``icoeff``: PID coefficients.
    - ``max_steps``: Diffrax step budget (an exhausted budget gives a non-successful
      ``result``, not an exception).
    - ``adjoint``: default ``RecursiveCheckpointAdjoint()`` (reverse-mode gradients).

    ``jit``, ``vmap`` (over params, inputs or ``y0``) and ``grad`` apply. IP3 is the exact
    solution of its linear equation; ``Ca_astro`` and ``h_IP3R`` are integrated with a
    step boundary at every input event.
    """
    if not isinstance(params, LiRinzelParams):
        raise TypeError(f"`params` must be a LiRinzelParams, got {type(params).__name__}")
    ts = as_array("ts", ts, ndim=1)
    if ts.shape[0] < 1:
        raise ValueError("`ts` must contain at least one save time")
    check_finite("ts", ts)
    if is_concrete(ts):
        tsn = np.asarray(ts)
        if np.any(np.diff(tsn) < 0):
            raise ValueError("`ts` must be sorted (non-decreasing)")
        if is_concrete(t0) and tsn[0] < float(t0):
            raise ValueError(f"`ts` must start at or after `t0` = {float(t0)}, got ts[0] = {tsn[0]}")
    dtype = ts.dtype
    params = params.astype(dtype)
    inputs = tuple(jax.tree.map(lambda x: jnp.asarray(x, dtype), i) for i in _as_inputs(inputs))
    for i in inputs:
        if isinstance(i, SpikeInput) and i.times.ndim != 1:
            raise ValueError(
                f"`inputs`: SpikeInput.times must be 1-D for one astrocyte, got shape {i.times.shape}; "
                "jax.vmap over the leading axis of a batch"
            )
    if solver is None:
        solver = dfx.Tsit5()
    d_rtol, d_atol = _DEFAULT_TOL[jnp.dtype(dtype).itemsize]
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    if y0 is None:
        y0 = LiRinzelState.initial(params)
    y0 = jax.tree.map(lambda x: jnp.asarray(x, dtype), y0)
    t0 = jnp.asarray(t0, dtype)
    t1 = ts[-1]

    ip3_of_t = _make_ip3(params, inputs, t0, t1, y0.IP3)
    # Non-finite input: freeze the solve (zero vector field, finite start) so that it ends in
    # a few steps instead of spending max_steps on rejected NaN steps; the traces become NaN
    # and the result nonfinite_input.
    finite_in = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((params, inputs, y0, ts))]))

    def vf(t, y, args):
        ca, h = y
        ip3 = ip3_of_t(t)
        d = li_rinzel_vector_field(t, LiRinzelState(ip3, ca, h), params)
        return jnp.where(finite_in, d.Ca_astro, 0.0), jnp.where(finite_in, d.h_IP3R, 0.0)

    controller = dfx.PIDController(
        rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff, jump_ts=_jump_times(inputs, t0, t1, dtype)
    )
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf),
        solver,
        t0,
        t1,
        dt0,
        (jnp.where(finite_in, y0.Ca_astro, 0.0), jnp.where(finite_in, y0.h_IP3R, 0.0)),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=adjoint if adjoint is not None else dfx.RecursiveCheckpointAdjoint(),
        throw=False,
    )
    ca, h = sol.ys
    ca = jnp.where(finite_in, ca, jnp.nan)
    h = jnp.where(finite_in, h, jnp.nan)
    finite_out = jnp.all(jnp.isfinite(ca)) & jnp.all(jnp.isfinite(h))
    # Diffrax leaves samples after a failure at inf; report them as NaN (clipping would turn
    # them into a plausible Ca_tot).
    ca = jnp.where(jnp.isfinite(ca), jnp.clip(ca, 0.0, params.Ca_tot), jnp.nan)  # clip as NEST after every step
    h = jnp.where(jnp.isfinite(h), h, jnp.nan)
    ip3 = ip3_of_t(ts)
    return LiRinzelSolution(
        ts=ts,
        Ca_astro=ca,
        IP3=ip3,
        h_IP3R=h,
        SIC=sic_current(ca, params),
        result=_map_diffrax_result(sol.result, finite_in, finite_out),
        stats={
            "num_steps": sol.stats["num_steps"],
            "num_accepted_steps": sol.stats["num_accepted_steps"],
            "num_rejected_steps": sol.stats["num_rejected_steps"],
            "diffrax_result": sol.result,
        },
    )
