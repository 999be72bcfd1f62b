r"""Fluorescence observation model: calcium trace -> GCaMP-like imaging trace (dF/F).

Maps a cytosolic calcium trace (µM, at times in ms; e.g. ``Ca_astro`` of
:func:`~astrojax.astro.li_rinzel.simulate_li_rinzel`) to what a calcium-imaging
experiment records:

1. **Indicator binding** (cooperative, one effective binding step; Hires et al. 2008)::

       db/dt = k_on Ca^n (1 - b) - k_off b,      k_on = k_off / Kd^n

   ``b`` is the bound (bright) fraction of the indicator; at constant calcium it settles
   on the Hill curve ``Ca^n / (Ca^n + Kd^n)`` with rate ``k_on Ca^n + k_off``. Between
   samples, calcium is held at the mean of the two end samples and the linear equation
   is solved exactly (second-order accurate in the sampling interval).
2. **Fluorescence with photobleaching drift**::

       F(t) = F_min * exp(-(t - t_first) / tau_bleach) * (1 + (R - 1) b(t)),  R = F_max / F_min

3. **Shot noise**: the recorded value is a photon count with mean ``F`` (``F_min`` is the
   expected count of the unbleached, calcium-free indicator in one sample): Poisson, or
   its Gaussian approximation ``F + sqrt(F) * N(0, 1)`` (differentiable, for fitting),
   plus optional Gaussian read noise ``sigma_read``.
4. **dF/F** relative to the resting fluorescence ``F0 = F_min (1 + (R - 1) b_rest)`` at
   ``Ca_rest`` without bleaching correction, as a fixed-baseline analysis would compute it:
   bleaching shows as a slow downward drift ``exp(-t / tau_bleach) - 1``.

Parameters (:class:`IndicatorParams`)
-------------------------------------

==========  ========  =========  ======================================================
name        unit      default    meaning
==========  ========  =========  ======================================================
Kd          µM        0.2        half-activation calcium concentration of the indicator
n_hill      1         2.5        Hill coefficient (cooperativity)
k_off       1/ms      0.002      unbinding rate (decay of the bound fraction, 2 /s)
R           1         10.0       dynamic range ``F_max / F_min``
F_min       photons   1000.0     expected counts per sample of calcium-free, unbleached dye
tau_bleach  ms        600000.0   photobleaching time constant (10 min)
Ca_rest     µM        0.073      resting calcium defining the dF/F baseline ``F0``
sigma_read  photons   0.0        standard deviation of additive read noise
==========  ========  =========  ======================================================

The defaults are GCaMP6-like orders of magnitude, not a calibrated indicator: GCaMP-type
indicators have Kd of 100-300 nM and decay rates of 1-5 /s (Helassa et al. 2016);
Hires et al. (2008) model them with a Hill coefficient of 2.5.

References
----------

- S. A. Hires, L. Tian, L. L. Looger (2008). Reporting neural activity with genetically
  encoded calcium indicators. Brain Cell Biology 36:69-86.
- N. Helassa, B. Podor, A. Fine, K. Török (2016). Design and mechanistic insight into
  ultrafast calcium indicators for monitoring intracellular calcium dynamics.
  Sci. Rep. 6:38276.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._validate import as_array, check_choice, check_nonnegative, check_positive, is_concrete

__all__ = ["IndicatorParams", "FluorescenceTrace", "bound_fraction", "observe_fluorescence", "INDICATOR_NAMES"]

INDICATOR_NAMES = ("Kd", "n_hill", "k_off", "R", "F_min", "tau_bleach", "Ca_rest", "sigma_read")


class IndicatorParams(eqx.Module):
    """Indicator, optics and noise parameters (table in :mod:`astrojax.astro.fluorescence`).
    All positive except ``sigma_read`` (non-negative); ``R`` must exceed 1."""

    Kd: jax.Array
    n_hill: jax.Array
    k_off: jax.Array
    R: jax.Array
    F_min: jax.Array
    tau_bleach: jax.Array
    Ca_rest: jax.Array
    sigma_read: jax.Array

    def __init__(self, Kd=0.2, n_hill=2.5, k_off=0.002, R=10.0, F_min=1000.0, tau_bleach=600_000.0,
                 Ca_rest=0.073, sigma_read=0.0, dtype=None):
        dtype = dtype or jnp.result_type(float)
        vals = dict(locals())
        for name in INDICATOR_NAMES:
            (check_nonnegative if name == "sigma_read" else check_positive)(name, vals[name])
            setattr(self, name, jnp.asarray(vals[name], dtype))
        if is_concrete(self.R) and bool(jnp.any(self.R <= 1.0)):
            raise ValueError(f"`R` (F_max / F_min) must be > 1, got {float(self.R)}")

    def replace(self, **kw) -> "IndicatorParams":
        unknown = set(kw) - set(INDICATOR_NAMES)
        if unknown:
            raise ValueError(f"unknown indicator parameter(s) {sorted(unknown)}; expected some of {INDICATOR_NAMES}")
        vals = {n: getattr(self, n) for n in INDICATOR_NAMES}
        vals.update(kw)
        return IndicatorParams(**vals, dtype=self.Kd.dtype)


class FluorescenceTrace(eqx.Module):
    """``F`` recorded counts (with noise), ``F_mean`` their expectation, ``dff`` dF/F of the
    recorded counts, ``dff_mean`` of the expectation, ``bound`` the indicator's bound fraction."""

    ts: jax.Array
    F: jax.Array
    F_mean: jax.Array
    dff: jax.Array
    dff_mean: jax.Array
    bound: jax.Array


def _hill(ca, ind):
    x = (jnp.maximum(ca, 0.0) / ind.Kd) ** ind.n_hill
    return x / (1.0 + x)


def bound_fraction(ts, ca, ind: IndicatorParams, b0=None):
    """Bound indicator fraction at ``ts`` (ms) for calcium samples ``ca`` (µM) at ``ts``;
    starts at ``b0`` (default: the Hill equilibrium at ``ca[0]``). Exact for calcium held at
    the mean of each interval's end samples."""
    ts = as_array("ts", ts, ndim=1)
    ca = as_array("ca", ca, ndim=1).astype(ts.dtype)
    if ca.shape != ts.shape:
        raise ValueError(f"`ca` must have the shape of `ts` {ts.shape}, got {ca.shape}")
    b0 = _hill(ca[0], ind) if b0 is None else jnp.asarray(b0, ts.dtype)
    c_mid = jnp.maximum(0.5 * (ca[1:] + ca[:-1]), 0.0)
    on = ind.k_off * (c_mid / ind.Kd) ** ind.n_hill  # k_on Ca^n
    rate = on + ind.k_off
    b_inf = on / rate

    def step(b, x):
        dt, r, binf = x
        b = binf + (b - binf) * jnp.exp(-r * dt)
        return b, b

    _, bs = jax.lax.scan(step, b0, (jnp.diff(ts), rate, b_inf))
    return jnp.concatenate([b0[None], bs])


def observe_fluorescence(ts, ca, ind: IndicatorParams | None = None, *, key=None, noise: str = "gaussian",
                         b0=None) -> FluorescenceTrace:
    """Imaging trace of a calcium trace: binding, bleaching, shot (and read) noise, dF/F.

    ``ts`` (ms) and ``ca`` (µM) 1-D of equal length; ``key`` a JAX PRNG key (``None``: no
    noise, ``F = F_mean``); ``noise`` ``"gaussian"`` (differentiable reparameterisation of
    shot noise, variance = mean count) or ``"poisson"`` (exact counts). jit/vmap/grad-able.
    """
    ind = IndicatorParams() if ind is None else ind
    if not isinstance(ind, IndicatorParams):
        raise TypeError(f"`ind` must be an IndicatorParams, got {type(ind).__name__}")
    check_choice("noise", noise, ("gaussian", "poisson"))
    ts = as_array("ts", ts, ndim=1)
    ind = jax.tree.map(lambda x: jnp.asarray(x, ts.dtype), ind)
    b = bound_fraction(ts, ca, ind, b0)
    bleach = jnp.exp(-(ts - ts[0]) / ind.tau_bleach)
    F_mean = ind.F_min * bleach * (1.0 + (ind.R - 1.0) * b)
    if key is None:
        F = F_mean
    else:
        k1, k2 = jax.random.split(key)
        if noise == "poisson":
            F = jax.random.poisson(k1, F_mean).astype(ts.dtype)
        else:
            F = F_mean + jnp.sqrt(F_mean) * jax.random.normal(k1, ts.shape, ts.dtype)
        F = F + ind.sigma_read * jax.random.normal(k2, ts.shape, ts.dtype)
    F0 = ind.F_min * (1.0 + (ind.R - 1.0) * _hill(ind.Ca_rest, ind))
    return FluorescenceTrace(ts=ts, F=F, F_mean=F_mean, dff=F / F0 - 1.0, dff_mean=F_mean / F0 - 1.0, bound=b)
