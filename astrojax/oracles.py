r"""Closed forms the simulated network is compared against (docs/model.md).

All functions take one head's projections ``q, k`` of shape ``(T, D)`` and ``v`` of
shape ``(T, Dv)`` *as produced by the projections*, and apply the ``D**-1/4`` scaling
of queries and keys themselves. They return ``(y, normaliser)``:

- :func:`softmax_attention` -> ``(y, Z)`` with ``Z_t = sum_tau exp(q~_t . k~_tau)``.
- :func:`random_feature_attention` -> ``(y, a)`` with
  ``a_t = phi(q~_t) . sum_tau phi(k~_tau)`` (the astrocyte response in the timescale limit).
- :func:`leaky_random_feature_attention` -> the exponentially recency-weighted RFA that
  the ODE with leak converges to.

Sums run over all tokens (bidirectional) or ``tau <= t`` (``causal=True``). Everything is
computed with shared shifts in log space, so large inputs do not overflow in float32.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validate import check_nonnegative, check_qkv, fourth_root_scale
from .features import AbstractFeatureMap, as_feature_map

__all__ = ["softmax_attention", "softmax_weights", "random_feature_attention", "leaky_random_feature_attention"]


def _scaled(q, k):
    s = fourth_root_scale(q.shape[-1])
    return q * s, k * s


def softmax_weights(q, k, *, causal: bool = False, key_mask=None):
    """Attention weights ``(T, T)`` and ``log Z`` ``(T,)`` of one head (keys with
    ``key_mask == False`` and, if causal, future keys get zero weight)."""
    qs, ks = _scaled(q, k)
    logits = qs @ ks.T
    T = q.shape[0]
    allowed = jnp.ones((T, T), bool)
    if causal:
        allowed = jnp.tril(allowed)
    if key_mask is not None:
        allowed = allowed & jnp.asarray(key_mask, bool)[None, :]
    logits = jnp.where(allowed, logits, -jnp.inf)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.exp(logits - lse[:, None]), lse


def _normaliser(log_z, log: bool, name: str):
    """``log_z`` itself, or ``exp(log_z)`` with an error (also under jit) where it is
    outside the dtype's range instead of a silent 0 or inf."""
    if log:
        return log_z
    z = jnp.exp(log_z)
    bad = jnp.any(jnp.isfinite(log_z) & (~jnp.isfinite(z) | (z < jnp.finfo(z.dtype).tiny)))
    return eqx.error_if(z, bad, f"{name} is outside the float range of the inputs at some token; "
                                f"pass log=True for its logarithm")


def softmax_attention(q, k, v, *, causal: bool = False, key_mask=None, log: bool = False):
    """Softmax self-attention of one head: ``y_t = sum_tau v_tau exp(q~_t.k~_tau) / Z_t``.

    ``key_mask`` (optional, ``(T,)`` bool) excludes padding keys from every sum.
    Returns ``(y, Z)``, ``y`` of shape ``(T, Dv)``, ``Z`` of shape ``(T,)`` (``log Z`` with
    ``log=True``; without it, a ``Z`` that over- or underflows the dtype is an error).
    """
    q, k, v = check_qkv(q, k, v)
    w, lse = softmax_weights(q, k, causal=causal, key_mask=key_mask)
    return w @ v, _normaliser(lse, log, "the softmax normaliser Z")


def _weighted_rfa(q, k, v, fmap: AbstractFeatureMap, weights, log: bool = False, causal_rows: bool = False):
    """``y_t = sum_tau w_{t,tau} v_tau K_{t,tau} / a_t``, ``a_t = sum_tau w K`` with
    ``K = phi(q~_t) . phi(k~_tau)``. Shifts in log space: one per feature over the keys
    and one per query row, so every row's largest term is ``O(1)`` (no 0/0 rows)."""
    qs, ks = _scaled(q, k)
    if fmap.positive:
        lq, lk = fmap.log_features(qs), fmap.log_features(ks)
        T = q.shape[0]
        if causal_rows:
            # per-feature shift over the keys a row may see: the prefix maximum up to the
            # end of its block of 16 rows (a matmul per block); if a row still underflows
            # (its allowed keys are far below later ones in its block), every row is
            # recomputed with its own prefix maximum (exact, O(T^2 m) exponentials)
            B = 16
            nb = -(-T // B)
            skall = jax.lax.stop_gradient(jax.lax.cummax(lk, axis=0))  # (T, m)
            ends = jnp.minimum(jnp.arange(nb) * B + B - 1, T - 1)
            taus = jnp.arange(T)

            def kernel(sk):  # sk: (T, m) shift used by each row
                lqs = lq + sk
                sq = jax.lax.stop_gradient(jnp.max(lqs, axis=-1, keepdims=True))

                def row(r):
                    lqs_t, sk_t, sq_t, t = r
                    lk_t = jnp.where((taus <= t)[:, None], lk - sk_t, -jnp.inf)  # future keys: weight 0
                    return jnp.exp(lk_t) @ jnp.exp(lqs_t - sq_t)

                return jax.lax.map(row, (lqs, sk, sq, taus), batch_size=min(T, 64)), sq

            sk_rows = jnp.repeat(skall[ends], B, axis=0)[:T]
            lqs_b = lq + sk_rows
            sq_b = jax.lax.stop_gradient(jnp.max(lqs_b, axis=-1, keepdims=True))
            Qb = jnp.concatenate([jnp.exp(lqs_b - sq_b), jnp.zeros((nb * B - T, lq.shape[1]), lq.dtype)])

            def block(i):  # rows of block i against every key, shift = prefix max at block end
                lk_i = jnp.where((taus <= ends[i])[:, None], lk - skall[ends[i]], -jnp.inf)
                return jax.lax.dynamic_slice_in_dim(Qb, i * B, B) @ jnp.exp(lk_i).T

            kern_b = jax.lax.map(block, jnp.arange(nb)).reshape(nb * B, T)[:T]
            under = jnp.any(jnp.sum(kern_b * weights, axis=-1) < 1e3 * jnp.finfo(kern_b.dtype).tiny)
            kern, sq = jax.lax.cond(under, lambda: kernel(skall), lambda: (kern_b, sq_b))
        else:
            sk = jax.lax.stop_gradient(jnp.max(lk, axis=0))  # (m,) per-feature key shift
            lqs = lq + sk
            sq = jax.lax.stop_gradient(jnp.max(lqs, axis=-1, keepdims=True))  # (T, 1)
            kern = jnp.exp(lqs - sq) @ jnp.exp(lk - sk).T
        log_scale = sq[:, 0]
    else:
        kern = fmap(qs) @ fmap(ks).T
        log_scale = jnp.zeros(q.shape[:1], q.dtype)
    kern = kern * weights
    a = jnp.sum(kern, axis=-1)
    y = (kern @ v) / a[:, None]
    y = eqx.error_if(y, jnp.any(a == 0), "random-feature attention: a row of the kernel underflows "
                     "(no allowed key within the float range of the largest one); use float64")
    if fmap.positive:
        log_a = jnp.log(jnp.where(a > 0, a, 1.0)) + log_scale
        return y, _normaliser(log_a, log, "the astrocyte response a")
    return y, a


def random_feature_attention(q, k, v, W, *, causal: bool = False, log: bool = False):
    """Random-feature attention (the neuron--astrocyte network's closed form).

    ``W`` is the ``(m, D)`` hidden-neuron input weight matrix of the paper's performer
    map, or any :class:`~astrojax.features.AbstractFeatureMap`. Returns ``(y, a)`` (``log a``
    with ``log=True``; without it, an ``a`` outside the dtype's range is an error).
    """
    q, k, v = check_qkv(q, k, v)
    fmap = as_feature_map(W, q.shape[1])
    T = q.shape[0]
    weights = jnp.tril(jnp.ones((T, T), q.dtype)) if causal else jnp.ones((T, T), q.dtype)
    return _weighted_rfa(q, k, v, fmap, weights, log, causal)


def leaky_random_feature_attention(q, k, v, W, *, decay, causal: bool = False):
    """Exponentially recency-weighted RFA: the limit of the ODE with leak.

    ``decay`` is the leak rate of synapses and processes per window,
    ``kappa = lambda_H/tau_H = lambda_p/tau_p`` (both must be equal for this closed form).
    A token written in window ``i`` is weighted at a read ending with window ``j`` by
    ``exp(-kappa (j - i))``. Windows: bidirectional writes ``0..T-1`` then reads
    ``T..2T-1``; causal alternates write ``2t`` and read ``2t+1``. ``a`` is the decayed
    astrocyte response, ``a_t = sum_tau exp(-kappa (j_t - i_tau)) phi(q~_t).phi(k~_tau)``.
    In the simulator the lag of ``a`` adds a relative error ``~ kappa tau_a``.
    """
    q, k, v = check_qkv(q, k, v)
    check_nonnegative("decay", decay)
    fmap = as_feature_map(W, q.shape[1])
    T = q.shape[0]
    t = jnp.arange(T)
    if causal:
        dist = 2.0 * (t[:, None] - t[None, :]) + 1.0
        mask = t[:, None] >= t[None, :]
    else:
        dist = (T + t[:, None]) - t[None, :]
        mask = jnp.ones((T, T), bool)
    weights = jnp.where(mask, jnp.exp(-decay * jnp.where(mask, dist, 0.0)), 0.0).astype(q.dtype)
    return _weighted_rfa(q, k, v, fmap, weights, causal_rows=causal)
