"""The stable functional API: one head of the neuron--astrocyte network."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._validate import check_qkv, fourth_root_scale
from .dynamics import NeuronAstrocyteParams
from .features import AbstractFeatureMap, as_feature_map
from .integrate import RESULTS, AbstractMethod, FastPath, SaveAt, solve
from .protocol import Protocol, as_protocol

__all__ = ["simulate_attention", "simulate_head", "head_drives", "solve_head"]


def head_drives(q, k, fmap: AbstractFeatureMap):
    """Log feature drives ``log phi(k~)``, ``log phi(q~)`` of one head, with the
    ``D**-1/4`` scaling (the drives themselves for a signed map). Returns
    ``(drive_k, drive_q, positive)``."""
    s = fourth_root_scale(q.shape[-1])
    if fmap.positive:
        return fmap.log_features(k * s), fmap.log_features(q * s), True
    return fmap(k * s), fmap(q * s), False


def solve_head(fmap: AbstractFeatureMap, params, q, k, v, protocol: Protocol, method: AbstractMethod,
               saveat: SaveAt = SaveAt(), key_mask=None, init=None):
    """One head through :func:`astrojax.integrate.solve` on already-validated inputs,
    no defaults (``init``: a :class:`~astrojax.integrate.Carry` to continue from).
    Returns the :class:`~astrojax.integrate.Solution`."""
    dk, dq, positive = head_drives(q, k, fmap)
    if not positive and protocol.gain_control:
        protocol = dataclasses.replace(protocol, gain_control=False)
    return solve(params, dk, dq, v, protocol, method, saveat, key_mask=key_mask, positive=positive, init=init)


def simulate_head(fmap: AbstractFeatureMap, params, q, k, v, protocol: Protocol, method, key_mask=None):
    """One head on already-validated inputs, no defaults (the building block of layers
    and experiments; jit/vmap friendly). Keys with ``key_mask == False`` are skipped
    (masked equals truncated). Returns ``(y, a)``."""
    sol = solve_head(fmap, params, q, k, v, protocol, method, key_mask=key_mask)
    return sol.y, sol.a


def simulate_attention(
    q,
    k,
    v,
    W,
    *,
    protocol: str | Protocol = "bidirectional",
    params: NeuronAstrocyteParams | None = None,
    method: AbstractMethod | None = None,
    trace: bool = False,
    key_mask=None,
    log: bool = False,
):
    """Simulate one head of the neuron--astrocyte network on one episode.

    Args:
        q, k: ``(T, D)`` queries and keys as produced by the projections (the
            ``D**-1/4`` scaling is applied here).
        v: ``(T, Dv)`` values.
        W: ``(m, D)`` hidden-neuron input weights (the paper's performer map) or any
            :class:`~astrojax.features.AbstractFeatureMap` (a signed map such as the
            cosine map runs without gain control and can make ``a`` change sign).
        protocol: ``"bidirectional"`` (write all, then read all), ``"causal"`` (write
            then read, token by token) or a :class:`~astrojax.protocol.Protocol`
            (write-gate delay, gain control).
        params: time constants, gains and leaks; default
            ``NeuronAstrocyteParams()`` (the fast-neuron timescale limit).
        method: ``FastPath()`` (default) or ``DiffraxPath(...)``.
        trace: also return a :class:`~astrojax.integrate.Trace`.
        key_mask: optional ``(T,)`` bool, False for padding tokens (skipped).
        log: return ``log a`` instead of ``a`` (finite for inputs of any scale, where
            ``a`` itself may over- or underflow the dtype).

    Returns:
        ``(y, a)``: the read-out ``y`` ``(T, Dv)`` sampled at the end of each reading
        window and the astrocyte response ``a`` ``(T,)`` normalised so that it equals
        ``phi(q~_t) . sum_tau phi(k~_tau)`` in the timescale limit (sum over
        ``tau <= t`` when causal). With ``trace=True``: ``(y, a, trace)``.

    Raises:
        An error (also under ``jax.jit``, via ``equinox.error_if``) naming the problem if
        an input or parameter is NaN/inf, or if ``a`` is outside the float range of the
        inputs (pass ``log=True`` for such inputs).

    Example:
        >>> y, a = simulate_attention(q, k, v, W)            # doctest: +SKIP
        >>> y_rfa, a_rfa = random_feature_attention(q, k, v, W)
    """
    q, k, v = check_qkv(q, k, v)
    fmap = as_feature_map(W, q.shape[1])
    protocol = as_protocol(protocol)
    if params is None:
        params = NeuronAstrocyteParams(dtype=q.dtype)
    elif not isinstance(params, NeuronAstrocyteParams):
        raise TypeError(f"`params` must be NeuronAstrocyteParams, got {type(params).__name__}")
    if method is None:
        method = FastPath()
    if key_mask is not None:
        key_mask = jnp.asarray(key_mask, bool)
        if key_mask.shape != (q.shape[0],):
            raise ValueError(f"`key_mask` must have shape ({q.shape[0]},), got {key_mask.shape}")
    sol = solve_head(fmap, params, q, k, v, protocol, method, SaveAt(trace=trace), key_mask)
    bad = sol.result != RESULTS.successful
    if log:
        bad = bad & (sol.result != RESULTS.response_out_of_range)
    y, a = sol.result.error_if((sol.y, sol.log_a if log else sol.a), bad)
    if trace:
        return y, a, sol.trace
    return y, a
