r"""The neuron--astrocyte vector field of docs/model.md ("Continuous-time equations") and its parameters.

One attention head. Time is measured in token windows (a window has length 1); every
time constant below is in window units (e.g. ``tau_h = 0.02`` is a 20 ms neuron for
a 1 s presentation window).

State: ``h`` (m,) hidden-neuron rates, ``H`` (Dv, m) tripartite synaptic weights,
``p`` (m,) astrocyte-process calcium, ``a`` () astrocyte response, ``y`` (Dv,) output
rates. Inputs, piecewise constant per window: feature drive ``f = phi(u)``, value ``v``,
write gate ``w``, read gate ``r`` and read gain ``g``::

    tau_h dh/dt = f - h                                  hidden neurons
    tau_H dH/dt = w eta_H v h^T - lambda_H H             Hebbian tripartite synapses
    tau_p dp/dt = w eta_p h     - lambda_p p             astrocyte processes
    tau_a da/dt = r g p . h     - a                      astrocyte response
    tau_y dy/dt = r g H h       - a y                    outputs, shunted by the astrocyte

The read gain ``g = 1 / (tokens written so far)`` keeps ``a = O(1)`` (docs/model.md, "Conventions":
1/T in the bidirectional protocol, 1/(t+1) in the causal one), which keeps the shunting
rate ``a / tau_y`` of order ``1/tau_y`` rather than ``T/tau_y``. The divisive
gliotransmission of the paper appears as the shunting term ``-a y``: at steady state
``y = H h / a`` without ever dividing by a small ``a``.

Parameters (all scalars, all differentiable; defaults give the timescale limit):

=========  ==============================================  ========  =======
name       meaning                                         unit      default
=========  ==============================================  ========  =======
tau_h      hidden-neuron time constant                     window    0.02
tau_H      synaptic plasticity time constant               window    1.0
tau_p      astrocyte-process calcium time constant         window    1.0
tau_a      astrocyte-response time constant                window    0.02
tau_y      output-neuron time constant                     window    0.02
eta_H      Hebbian learning gain                           1         1.0
eta_p      presynaptic (process) plasticity gain           1         1.0
lambda_H   synaptic leak (decay rate lambda_H / tau_H)     1         0.0
lambda_p   process-calcium leak (rate lambda_p / tau_p)    1         0.0
=========  ==============================================  ========  =======

In the timescale limit (``tau_h, tau_a, tau_y << 1``, no leak) the read-out at the end
of each reading window is ``rho * RFA`` with ``rho = (eta_H / tau_H) / (eta_p / tau_p)``
(1 with the defaults). References: Kozachkov, Kastanenka & Krotov, PNAS 120 (2023)
e2219150120; docs/model.md (the continuous-time formulation is ours).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validate import check_nonnegative, check_positive

__all__ = ["NeuronAstrocyteParams", "State", "vector_field", "zero_state", "PARAM_NAMES"]

TIME_CONSTANTS = ("tau_h", "tau_H", "tau_p", "tau_a", "tau_y")
GAINS = ("eta_H", "eta_p")
LEAKS = ("lambda_H", "lambda_p")
PARAM_NAMES = TIME_CONSTANTS + GAINS + LEAKS


class NeuronAstrocyteParams(eqx.Module):
    """Time constants, gains and leaks of one head (see the module docstring).

    Values are checked when concrete: time constants and gains must be positive,
    leaks non-negative. Use ``jax.vmap`` over a stacked instance for several heads.
    """

    tau_h: jax.Array
    tau_H: jax.Array
    tau_p: jax.Array
    tau_a: jax.Array
    tau_y: jax.Array
    eta_H: jax.Array
    eta_p: jax.Array
    lambda_H: jax.Array
    lambda_p: jax.Array

    def __init__(
        self,
        tau_h=0.02,
        tau_H=1.0,
        tau_p=1.0,
        tau_a=0.02,
        tau_y=0.02,
        eta_H=1.0,
        eta_p=1.0,
        lambda_H=0.0,
        lambda_p=0.0,
        dtype=None,
    ):
        dtype = dtype or jnp.result_type(float)
        vals = dict(locals())
        for name in PARAM_NAMES:
            x = vals[name]
            (check_nonnegative if name in LEAKS else check_positive)(name, x)
            setattr(self, name, jnp.asarray(x, dtype))

    def replace(self, **kw) -> "NeuronAstrocyteParams":
        """A copy with some parameters changed (validated)."""
        unknown = set(kw) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown parameter name(s) {sorted(unknown)}; expected {PARAM_NAMES}")
        vals = {n: getattr(self, n) for n in PARAM_NAMES}
        vals.update(kw)
        return NeuronAstrocyteParams(**vals, dtype=self.tau_h.dtype)

    @property
    def decay_H(self):
        """Synaptic decay rate per window, ``lambda_H / tau_H``."""
        return self.lambda_H / self.tau_H

    @property
    def decay_p(self):
        """Process-calcium decay rate per window, ``lambda_p / tau_p``."""
        return self.lambda_p / self.tau_p

    @property
    def readout_ratio(self):
        """``rho``: the limit read-out is ``rho * RFA``."""
        return (self.eta_H / self.tau_H) / (self.eta_p / self.tau_p)


class State(eqx.Module):
    """Network state of one head."""

    h: jax.Array
    H: jax.Array
    p: jax.Array
    a: jax.Array
    y: jax.Array


def zero_state(m: int, Dv: int, dtype) -> State:
    return State(
        h=jnp.zeros((m,), dtype),
        H=jnp.zeros((Dv, m), dtype),
        p=jnp.zeros((m,), dtype),
        a=jnp.zeros((), dtype),
        y=jnp.zeros((Dv,), dtype),
    )


def vector_field(t, s: State, args) -> State:
    """d(state)/dt for constant inputs ``args = (params, f, v, w, r, g)`` (diffrax signature)."""
    P, f, v, w, r, g = args
    dh = (f - s.h) / P.tau_h
    dH = (w * P.eta_H * jnp.outer(v, s.h) - P.lambda_H * s.H) / P.tau_H
    dp = (w * P.eta_p * s.h - P.lambda_p * s.p) / P.tau_p
    da = (r * g * jnp.dot(s.p, s.h) - s.a) / P.tau_a
    dy = (r * g * (s.H @ s.h) - s.a * s.y) / P.tau_y
    return State(dh, dH, dp, da, dy)
