"""The stable functional API: one head of the neuron--astrocyte network."""

from __future__ import annotations

from ._validate import check_qkv, fourth_root_scale
from .dynamics import NeuronAstrocyteParams
from .features import AbstractFeatureMap, as_feature_map
from .integrate import DiffraxPath, FastPath, integrate
from .protocol import Protocol, as_protocol

__all__ = ["simulate_attention", "simulate_head", "head_drives"]


def head_drives(q, k, fmap: AbstractFeatureMap):
    """Feature drives ``phi(k~)``, ``phi(q~)`` of one head, with the ``D**-1/4`` scaling."""
    s = fourth_root_scale(q.shape[-1])
    return fmap(k * s), fmap(q * s)


def simulate_head(fmap: AbstractFeatureMap, params, q, k, v, protocol: Protocol, method, key_mask=None):
    """One head on already-validated inputs, no defaults (the building block of layers
    and experiments; jit/vmap friendly). Keys with ``key_mask == False`` are never
    written. Returns ``(y, a)``."""
    fk, fq = head_drives(q, k, fmap)
    if key_mask is not None:
        fk = fk * key_mask[:, None]
    r = integrate(params, fk, fq, v, protocol, method)
    return r.y, r.a


def simulate_attention(
    q,
    k,
    v,
    W,
    *,
    protocol: str | Protocol = "bidirectional",
    params: NeuronAstrocyteParams | None = None,
    method: FastPath | DiffraxPath | None = None,
    trace: bool = False,
):
    """Simulate one head of the neuron--astrocyte network on one episode.

    Args:
        q, k: ``(T, D)`` queries and keys as produced by the projections (the
            ``D**-1/4`` scaling of MODEL.md is applied here).
        v: ``(T, Dv)`` values.
        W: ``(m, D)`` hidden-neuron input weights (the paper's performer map) or any
            :class:`~astrojax.features.AbstractFeatureMap` (a signed map such as the
            cosine map can make ``a`` change sign; prefer positive maps here).
        protocol: ``"bidirectional"`` (write all, then read all), ``"causal"`` (write
            then read, token by token) or a :class:`~astrojax.protocol.Protocol`
            (e.g. to change the write-gate delay).
        params: time constants, gains and leaks; default
            ``NeuronAstrocyteParams()`` (the fast-neuron timescale limit).
        method: ``FastPath()`` (default) or ``DiffraxPath(...)``.
        trace: also return a :class:`~astrojax.integrate.Trace`.

    Returns:
        ``(y, a)``: the read-out ``y`` ``(T, Dv)`` sampled at the end of each reading
        window and the astrocyte response ``a`` ``(T,)`` normalised so that it equals
        ``phi(q~_t) . sum_tau phi(k~_tau)`` in the timescale limit (sum over
        ``tau <= t`` when causal). With ``trace=True``: ``(y, a, trace)``.

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
    fk, fq = head_drives(q, k, fmap)
    res = integrate(params, fk, fq, v, protocol, method, trace=trace)
    if trace:
        out, tr = res
        return out.y, out.a, tr
    return res.y, res.a
