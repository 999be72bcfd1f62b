"""Distillation losses (all per sequence; average over a batch with ``jnp.mean``).

- :func:`readout_error`: relative squared error of the read-out against the teacher's
  head output, ``mean_t |y_t - y*_t|^2 / |y*_t|^2``.
- :func:`normaliser_log_error`: ``mean_t (log a_t - log Z_t)^2`` -- the astrocyte
  response against the softmax normaliser, on a log scale (Z spans many decades).
- :func:`attention_kl`: ``mean_t KL(softmax_t || student_t)`` of attention weights
  (softmax mimicry, Hedgehog: Zhang et al., ICLR 2024).
- :func:`hidden_error`, :func:`embedding_cosine_loss`, :func:`logits_kl`: whole-model
  targets (hidden states, sentence embedding, classifier logits).

And the evaluation metrics shared with ``astrojax reproduce``:
:func:`astrojax.reproduce.head_metrics` (r(a, Z), median relative errors of a and y).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "readout_error",
    "normaliser_log_error",
    "log_normaliser_error",
    "attention_kl",
    "hidden_error",
    "embedding_cosine_loss",
    "logits_kl",
]

_TINY = 1e-30
_LOG_TINY = float(math.log(_TINY))


def readout_error(y, y_ref, mask=None):
    """``mean_t |y_t - y*_t|^2 / (|y*_t|^2 + eps)`` over the last axis, masked mean over t."""
    num = jnp.sum((y - y_ref) ** 2, axis=-1)
    den = jnp.sum(y_ref**2, axis=-1) + 1e-6
    return _masked_mean(num / den, mask)


def normaliser_log_error(a, Z, mask=None):
    """``mean_t (log a_t - log Z_t)^2``; ``a`` is floored at 1e-30 (a vanishing response is
    a large error, not a NaN)."""
    la = jnp.log(jnp.maximum(a, _TINY))
    return _masked_mean((la - jnp.log(Z)) ** 2, mask)


def log_normaliser_error(log_a, log_Z, mask=None):
    """:func:`normaliser_log_error` on logarithms: the student's ``log a`` against ``log Z``
    (both finite where ``a`` or ``Z`` overflow float32)."""
    return _masked_mean((jnp.maximum(log_a, _LOG_TINY) - log_Z) ** 2, mask)


def attention_kl(w_ref, w, mask=None):
    """``mean_t sum_tau w*_{t,tau} (log w*_{t,tau} - log w_{t,tau})`` (rows sum to 1)."""
    kl = jnp.sum(jax.scipy.special.xlogy(w_ref, w_ref) - w_ref * jnp.log(jnp.maximum(w, _TINY)), axis=-1)
    return _masked_mean(kl, mask)


def hidden_error(h, h_ref, mask=None):
    """Relative squared error of hidden states ``(T, d)`` (per token, masked mean)."""
    return readout_error(h, h_ref, mask)


def embedding_cosine_loss(e, e_ref):
    """``1 - cos(e, e_ref)`` of two embeddings."""
    return 1.0 - jnp.sum(e * e_ref) / (jnp.linalg.norm(e) * jnp.linalg.norm(e_ref) + 1e-12)


def logits_kl(logits, logits_ref):
    """``KL(softmax(teacher) || softmax(student))`` of one example's logits."""
    p = jax.nn.softmax(logits_ref)
    return jnp.sum(p * (jax.nn.log_softmax(logits_ref) - jax.nn.log_softmax(logits)))


def _masked_mean(x, mask):
    if mask is None:
        return jnp.mean(x)
    mask = jnp.asarray(mask, bool)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask, dtype=x.dtype), 1.0)
