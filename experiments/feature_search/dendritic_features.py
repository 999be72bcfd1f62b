"""Drop-in for astrojax/features.py (uses its PerformerFeatures and _sq_half helpers;
in a standalone file import them as below)."""
from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from astrojax.features import AbstractFeatureMap, PerformerFeatures


def _sq_half(x):
    return 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


class DendriticExpFeatures(AbstractFeatureMap):
    r"""Exp features with a small "dendritic" MLP before the exponential:

    ``z(x) = W2 gelu(W1 x + b1) + Wl x + b2 - |x|^2/2``,  ``phi(x) = exp(z(x)) / sqrt(m)``.

    Same map for queries and keys; strictly positive. ``Wl`` is initialised as the
    paper's block-orthogonal performer weights and ``W2`` small, so at initialisation the
    map is (close to) the orthogonal random construction. Shapes: ``W1 (h, D)``,
    ``b1 (h,)``, ``W2 (m, h)``, ``Wl (m, D)``, ``b2 (m,)``.
    """

    W1: jax.Array
    b1: jax.Array
    W2: jax.Array
    Wl: jax.Array
    b2: jax.Array
    positive: ClassVar[bool] = True

    def __init__(self, W1, b1, W2, Wl, b2):
        self.W1, self.b1, self.W2, self.Wl, self.b2 = (jnp.asarray(a) for a in (W1, b1, W2, Wl, b2))

    @classmethod
    def init(cls, key, m: int, D: int, hidden: int = 64, *, w1_scale: float = 2.0,
             w2_scale: float = 0.1, dtype=None) -> "DendriticExpFeatures":
        dtype = dtype or jnp.result_type(float)
        k1, k2, k3 = jax.random.split(key, 3)
        Wl = PerformerFeatures.orthogonal(k1, m, D, dtype).W
        W1 = jax.random.normal(k2, (hidden, D), dtype) * (w1_scale / math.sqrt(D))
        W2 = jax.random.normal(k3, (m, hidden), dtype) * (w2_scale / math.sqrt(hidden))
        return cls(W1, jnp.zeros((hidden,), dtype), W2, Wl, jnp.zeros((m,), dtype))

    @property
    def num_features(self) -> int:
        return self.Wl.shape[0]

    @property
    def in_dim(self) -> int:
        return self.Wl.shape[1]

    def log_features(self, x):
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"feature map expects inputs with last dimension D={self.in_dim}, got shape {x.shape}")
        h = jax.nn.gelu(x @ self.W1.T + self.b1)
        z = h @ self.W2.T + x @ self.Wl.T + self.b2 - _sq_half(x)
        return z - 0.5 * math.log(self.num_features)
