r"""Hidden-neuron feature maps :math:`\phi` (docs/model.md).

Each map turns a (scaled) query or key ``x`` of shape ``(..., D)`` into the firing
rates of ``m`` hidden neurons, ``(..., m)``, such that ``phi(x) . phi(y)`` estimates
(or, for learned maps, replaces) the softmax kernel ``exp(x . y)``.

Which one to use:

- :class:`PerformerFeatures` -- the paper's positive random features,
  ``phi_j(x) = exp(w_j . x - |x|^2/2) / sqrt(m)``, ``w_j ~ N(0, I)``; unbiased for
  ``exp(x . y)`` and positive, so the astrocyte response ``a = p . h`` stays > 0.
- :class:`PerformerFeatures` built with :meth:`PerformerFeatures.orthogonal` (name
  ``"orthogonal"``) -- same map with block-orthogonal ``w_j`` whose norms follow the
  chi distribution (Choromanski et al., "Rethinking attention with Performers",
  ICLR 2021): still unbiased, lower variance, at no cost.
- :class:`SaturatingFeatures` -- performer rates clipped at a maximal firing rate
  (the paper's code clipped at 150): biologically bounded, biased for large inputs.
- :class:`CosineFeatures` -- Rahimi & Recht random Fourier features scaled by
  ``exp(|x|^2/2)``; unbiased but *not* positive, so ``a`` can change sign: use it only
  for closed-form comparisons, not as a drive of the neuron--astrocyte ODE.
- :class:`LearnedExpFeatures` -- trainable input weights and biases,
  ``phi(x) = exp(W x + b) / sqrt(m)``, optionally divisively normalised across the
  hidden population (a softmax over neurons, as in Hedgehog, Zhang et al. ICLR 2024).
- :class:`DendriticExpFeatures` -- trainable exp features whose log-rate adds a small
  nonlinear "dendritic" layer to the linear input, ``z = W2 gelu(W1 x + b1) + Wl x + b2
  - |x|^2/2``; initialised at the orthogonal random construction. The best distilled
  student of the feature-map search (experiments/feature_search).

All positive maps are computed from :meth:`log_features` so that large inputs neither
overflow nor underflow in float32 when a caller subtracts a shared shift (see
:func:`shifted_features`). Every map is an ``eqx.Module``: its arrays are ordinary
leaves, differentiable and trainable (filter them out of training to keep them fixed).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validate import as_array, check_choice, check_finite, check_int, check_positive

__all__ = [
    "AbstractFeatureMap",
    "PerformerFeatures",
    "SaturatingFeatures",
    "CosineFeatures",
    "LearnedExpFeatures",
    "DendriticExpFeatures",
    "FEATURE_MAPS",
    "make_feature_map",
    "shifted_features",
]


class AbstractFeatureMap(eqx.Module):
    """Interface of a hidden-neuron feature map ``(..., D) -> (..., m)``."""

    positive: eqx.AbstractClassVar[bool]

    @property
    @abc.abstractmethod
    def num_features(self) -> int:
        """m, the number of hidden neurons."""

    @property
    @abc.abstractmethod
    def in_dim(self) -> int:
        """D, the dimension of the (scaled) queries and keys."""

    def log_features(self, x: jax.Array) -> jax.Array:
        """``log phi(x)``; only for positive maps."""
        raise TypeError(f"{type(self).__name__} is not a positive map: it has no log_features")

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.exp(self.log_features(x))

    def _check_input(self, x):
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"feature map expects inputs with last dimension D={self.in_dim}, got shape {x.shape}"
            )


def _check_weights(W) -> jax.Array:
    W = as_array("W", W, 2)
    if W.shape[0] == 0:
        raise ValueError("`W` must have m >= 1 rows (hidden neurons), got m = 0")
    if W.shape[1] == 0:
        raise ValueError("`W` must have D >= 1 columns, got D = 0")
    check_finite("W", W)
    return W


def _sq_half(x):
    return 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


class PerformerFeatures(AbstractFeatureMap):
    """Positive random features ``exp(w_j . x - |x|^2/2)/sqrt(m)`` (FAVOR+).

    ``W`` has shape ``(m, D)``. Build with :meth:`random` (i.i.d. Gaussian, the
    paper's map) or :meth:`orthogonal` (block-orthogonal rows).
    """

    W: jax.Array
    positive: ClassVar[bool] = True

    def __init__(self, W):
        self.W = _check_weights(W)

    @property
    def num_features(self) -> int:
        return self.W.shape[0]

    @property
    def in_dim(self) -> int:
        return self.W.shape[1]

    @classmethod
    def random(cls, key, m: int, D: int, dtype=None) -> "PerformerFeatures":
        m = check_int("m", m)
        D = check_int("D", D)
        return cls(jax.random.normal(key, (m, D), dtype or jnp.result_type(float)))

    @classmethod
    def orthogonal(cls, key, m: int, D: int, dtype=None) -> "PerformerFeatures":
        """Block-orthogonal rows with chi(D)-distributed norms (Performer ORFs)."""
        m = check_int("m", m)
        D = check_int("D", D)
        return cls(orthogonal_gaussian(key, m, D, dtype))

    def log_features(self, x):
        self._check_input(x)
        return x @ self.W.T - _sq_half(x) - 0.5 * math.log(self.num_features)


def orthogonal_gaussian(key, m: int, D: int, dtype=None) -> jax.Array:
    """``(m, D)`` matrix of stacked random orthogonal ``D x D`` blocks whose rows have
    the norms of Gaussian vectors (so each row is marginally ``N(0, I)``)."""
    dtype = dtype or jnp.result_type(float)
    nblocks = -(-m // D)
    kq, kn = jax.random.split(key)
    g = jax.random.normal(kq, (nblocks, D, D), dtype)
    qmat, r = jnp.linalg.qr(g)
    # sign-fix so each block is Haar-distributed (otherwise rows are biased)
    qmat = qmat * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    rows = jnp.swapaxes(qmat, -1, -2).reshape(nblocks * D, D)[:m]
    norms = jnp.linalg.norm(jax.random.normal(kn, (m, D), dtype), axis=-1, keepdims=True)
    return rows * norms


class SaturatingFeatures(AbstractFeatureMap):
    """Performer rates clipped at ``rate_max`` before the ``1/sqrt(m)`` normalisation:
    ``phi_j(x) = min(exp(w_j . x - |x|^2/2), rate_max) / sqrt(m)`` (paper's code: 150)."""

    W: jax.Array
    rate_max: float = eqx.field(static=True)
    positive: ClassVar[bool] = True

    def __init__(self, W, rate_max: float = 150.0):
        self.W = _check_weights(W)
        check_positive("rate_max", rate_max)
        self.rate_max = float(rate_max)

    @property
    def num_features(self) -> int:
        return self.W.shape[0]

    @property
    def in_dim(self) -> int:
        return self.W.shape[1]

    def log_features(self, x):
        self._check_input(x)
        raw = x @ self.W.T - _sq_half(x)
        return jnp.minimum(raw, math.log(self.rate_max)) - 0.5 * math.log(self.num_features)


class CosineFeatures(AbstractFeatureMap):
    """Random Fourier features times ``exp(|x|^2/2)``:
    ``phi_j(x) = sqrt(2/m) cos(w_j . x + b_j) exp(|x|^2/2)``, ``b_j ~ U[0, 2 pi)``
    (Rahimi & Recht 2007). Unbiased for ``exp(x . y)`` but signed."""

    W: jax.Array
    b: jax.Array
    positive: ClassVar[bool] = False

    def __init__(self, W, b):
        self.W = _check_weights(W)
        self.b = as_array("b", b, 1)
        if self.b.shape[0] != self.W.shape[0]:
            raise ValueError(f"`b` must have shape (m,)=({self.W.shape[0]},), got {self.b.shape}")

    @classmethod
    def random(cls, key, m: int, D: int, dtype=None) -> "CosineFeatures":
        m = check_int("m", m)
        D = check_int("D", D)
        dtype = dtype or jnp.result_type(float)
        kw, kb = jax.random.split(key)
        return cls(
            jax.random.normal(kw, (m, D), dtype),
            jax.random.uniform(kb, (m,), dtype, 0.0, 2 * math.pi),
        )

    @property
    def num_features(self) -> int:
        return self.W.shape[0]

    @property
    def in_dim(self) -> int:
        return self.W.shape[1]

    def __call__(self, x):
        self._check_input(x)
        scale = math.sqrt(2.0 / self.num_features)
        return scale * jnp.cos(x @ self.W.T + self.b) * jnp.exp(_sq_half(x))


class LearnedExpFeatures(AbstractFeatureMap):
    """Trainable exponential features ``phi(x) = exp(W x + b) / sqrt(m)``.

    With ``normalize=True`` the rates are divisively normalised across the hidden
    population, ``phi(x) = softmax(W x + b)`` (Hedgehog-style). Initialise from the
    performer map with :meth:`from_performer` (``b = 0`` and the ``-|x|^2/2`` term kept
    as a fixed input-dependent bias) or randomly with :meth:`random`.
    """

    W: jax.Array
    b: jax.Array
    normalize: bool = eqx.field(static=True)
    center_norm: bool = eqx.field(static=True)
    positive: ClassVar[bool] = True

    def __init__(self, W, b=None, *, normalize: bool = False, center_norm: bool = True):
        self.W = _check_weights(W)
        self.b = (
            jnp.zeros((self.W.shape[0],), self.W.dtype) if b is None else as_array("b", b, 1)
        )
        if self.b.shape[0] != self.W.shape[0]:
            raise ValueError(f"`b` must have shape (m,)=({self.W.shape[0]},), got {self.b.shape}")
        self.normalize = bool(normalize)
        self.center_norm = bool(center_norm)

    @classmethod
    def random(cls, key, m: int, D: int, *, normalize=False, dtype=None) -> "LearnedExpFeatures":
        m = check_int("m", m)
        D = check_int("D", D)
        return cls(jax.random.normal(key, (m, D), dtype or jnp.result_type(float)), normalize=normalize)

    @property
    def num_features(self) -> int:
        return self.W.shape[0]

    @property
    def in_dim(self) -> int:
        return self.W.shape[1]

    def log_features(self, x):
        self._check_input(x)
        z = x @ self.W.T + self.b
        if self.center_norm:
            z = z - _sq_half(x)
        if self.normalize:
            return jax.nn.log_softmax(z, axis=-1)
        return z - 0.5 * math.log(self.num_features)


class DendriticExpFeatures(AbstractFeatureMap):
    r"""Exp features with a small nonlinear ("dendritic") layer before the exponential:

    ``z(x) = W2 gelu(W1 x + b1) + Wl x + b2 - |x|^2/2``,  ``phi(x) = exp(z(x)) / sqrt(m)``.

    Same map for queries and keys; strictly positive. Shapes: ``W1 (n, D)``, ``b1 (n,)``,
    ``W2 (m, n)``, ``Wl (m, D)``, ``b2 (m,)`` with ``n`` dendritic units shared by the
    ``m`` hidden neurons. Build with :meth:`init`: ``Wl`` is the paper's block-orthogonal
    performer weights and ``W2`` small, so at initialisation the map is close to the
    orthogonal random construction (exactly it with ``w2_scale=0``).
    """

    W1: jax.Array
    b1: jax.Array
    W2: jax.Array
    Wl: jax.Array
    b2: jax.Array
    positive: ClassVar[bool] = True

    def __init__(self, W1, b1, W2, Wl, b2):
        self.Wl = _check_weights(Wl)
        self.W1 = as_array("W1", W1, 2)
        self.b1 = as_array("b1", b1, 1)
        self.W2 = as_array("W2", W2, 2)
        self.b2 = as_array("b2", b2, 1)
        m, D = self.Wl.shape
        n = self.W1.shape[0]
        expected = {"W1": (n, D), "b1": (n,), "W2": (m, n), "b2": (m,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"`{name}` must have shape {shape} (m={m} hidden neurons, D={D} inputs, "
                    f"{n} dendritic units), got {getattr(self, name).shape}"
                )

    @classmethod
    def init(cls, key, m: int, D: int, hidden: int = 64, *, w1_scale: float = 2.0,
             w2_scale: float = 0.1, dtype=None) -> "DendriticExpFeatures":
        """Random initialisation near the orthogonal random construction:
        ``W1 ~ N(0, w1_scale^2 / D)``, ``W2 ~ N(0, w2_scale^2 / hidden)``, biases 0."""
        m, D, hidden = check_int("m", m), check_int("D", D), check_int("hidden", hidden)
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
        self._check_input(x)
        d = jax.nn.gelu(x @ self.W1.T + self.b1)
        z = d @ self.W2.T + x @ self.Wl.T + self.b2 - _sq_half(x)
        return z - 0.5 * math.log(self.num_features)


def _orth(key, m, D, dtype=None):
    return PerformerFeatures.orthogonal(key, m, D, dtype)


FEATURE_MAPS = {
    "performer": lambda key, m, D, **kw: PerformerFeatures.random(key, m, D, **kw),
    "orthogonal": _orth,
    "saturating": lambda key, m, D, rate_max=150.0, dtype=None: SaturatingFeatures(
        jax.random.normal(key, (check_int("m", m), check_int("D", D)), dtype or jnp.result_type(float)),
        rate_max,
    ),
    "cosine": lambda key, m, D, **kw: CosineFeatures.random(key, m, D, **kw),
    "learned": lambda key, m, D, **kw: LearnedExpFeatures.random(key, m, D, **kw),
    "dendritic": lambda key, m, D, **kw: DendriticExpFeatures.init(key, m, D, **kw),
}


def make_feature_map(name: str, key, m: int, D: int, **kwargs) -> AbstractFeatureMap:
    """Build a feature map by name: one of ``FEATURE_MAPS`` (performer, orthogonal,
    saturating, cosine, learned, dendritic)."""
    check_choice("feature_map", name, FEATURE_MAPS.keys())
    return FEATURE_MAPS[name](key, m, D, **kwargs)


def as_feature_map(W_or_map, D: int | None = None) -> AbstractFeatureMap:
    """Accept an ``(m, D)`` weight array (the paper's performer map) or a feature map;
    with ``D``, check that it takes ``D``-dimensional queries and keys."""
    fmap = W_or_map if isinstance(W_or_map, AbstractFeatureMap) else PerformerFeatures(W_or_map)
    if D is not None and fmap.in_dim != D:
        raise ValueError(f"`W` expects D={fmap.in_dim} input features but `q`/`k` have D={D}")
    return fmap


def shifted_features(fmap: AbstractFeatureMap, x: jax.Array, axis=None):
    """Features divided by a shared ``exp(shift)``, ``shift = max log phi`` over the
    whole array (or over ``axis``), computed in log space. Returns ``(phi * exp(-shift),
    shift)``; the shift is held out of the gradient. Signed maps return shift 0."""
    if not fmap.positive:
        f = fmap(x)
        return f, jnp.zeros((), f.dtype)
    lf = fmap.log_features(x)
    shift = jax.lax.stop_gradient(jnp.max(lf, axis=axis, keepdims=axis is not None))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.exp(lf - shift), shift
