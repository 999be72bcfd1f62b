"""Trainable students and the positivity transform of their biophysical parameters.

- :func:`unconstrain` / :func:`constrain`: every :class:`~astrojax.NeuronAstrocyteParams`
  inside a model is stored for the optimiser as unconstrained numbers -- time constants
  and gains as logs, leaks through an inverse softplus -- and mapped back before each
  forward pass, so they stay positive (leaks non-negative) whatever the optimiser does.
- :class:`HeadStudents`: the per-head scope. One neuron--astrocyte head per teacher head
  (stacked), each with its own learned hidden neurons and parameters, driven by its
  teacher head's ``q, k, v`` and trained to reproduce that head's output and normaliser.
- :func:`learned_feature_map`: the trainable hidden-neuron population (exp features,
  plain, divisively normalised or with a dendritic layer; all initialised at or near the
  paper's random construction so "before training" is the paper's network with the
  same ``m``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..dynamics import GAINS, LEAKS, PARAM_NAMES, TIME_CONSTANTS, NeuronAstrocyteParams
from .._validate import check_choice
from ..features import AbstractFeatureMap, DendriticExpFeatures, LearnedExpFeatures, PerformerFeatures
from ..integrate import DiffraxPath, FastPath
from ..layers import _implied_weights
from ..protocol import Protocol, as_protocol
from ..simulate import simulate_head, solve_head

__all__ = ["constrain", "unconstrain", "HeadStudents", "learned_feature_map", "STUDENT_FEATURES"]

_LEAK_FLOOR = 1e-6
STUDENT_FEATURES = ("learned", "learned_normalized", "dendritic")


def _is_params(x) -> bool:
    return isinstance(x, NeuronAstrocyteParams)


def _map_params(model, fns: dict):
    def one(P):
        if not _is_params(P):
            return P
        return eqx.tree_at(
            lambda p: [getattr(p, n) for n in PARAM_NAMES], P, [fns[n](getattr(P, n)) for n in PARAM_NAMES]
        )

    return jax.tree.map(one, model, is_leaf=_is_params)


def unconstrain(model):
    """Replace every ``NeuronAstrocyteParams`` by its unconstrained representation
    (log of time constants and gains, inverse softplus of leaks)."""
    inv_softplus = lambda x: jnp.log(jnp.expm1(jnp.maximum(x, _LEAK_FLOOR)))  # noqa: E731
    fns = {n: jnp.log for n in TIME_CONSTANTS + GAINS} | {n: inv_softplus for n in LEAKS}
    return _map_params(model, fns)


def constrain(raw_model):
    """Inverse of :func:`unconstrain` (leaks below ``1e-6`` come back as ~1e-6)."""
    fns = {n: jnp.exp for n in TIME_CONSTANTS + GAINS} | {n: jax.nn.softplus for n in LEAKS}
    return _map_params(raw_model, fns)


def learned_feature_map(key, m: int, D: int, kind: str = "learned", *, hidden: int = 64,
                        dtype=None) -> AbstractFeatureMap:
    """A trainable hidden-neuron population of ``m`` neurons for ``D``-dim inputs.

    ``kind``: ``"learned"`` -- exp features ``exp(W x + b - |x|^2/2) / sqrt(m)`` with
    block-orthogonal Gaussian ``W`` and ``b = 0``: at initialisation it *is* the paper's
    (orthogonal) random construction; ``"learned_normalized"`` -- the same, divisively
    normalised across the population (Hedgehog-style; ``a`` then loses the absolute
    scale of Z); ``"dendritic"`` -- :class:`~astrojax.features.DendriticExpFeatures`
    with ``hidden`` dendritic units (near the random construction at initialisation).
    """
    check_choice("feature_map", kind, STUDENT_FEATURES)
    if kind == "dendritic":
        return DendriticExpFeatures.init(key, m, D, hidden, dtype=dtype)
    W = PerformerFeatures.orthogonal(key, m, D, dtype).W
    return LearnedExpFeatures(W, normalize=kind == "learned_normalized")


class HeadStudents(eqx.Module):
    """``N`` independent neuron--astrocyte heads (the per-head scope), stacked.

    ``__call__(q, k, v)`` with ``(N, T, D)`` inputs (the teacher heads' projections)
    returns ``(y (N, T, Dv), a (N, T))`` simulated by ``method``;
    ``attention(q, k)`` the feature-implied attention weights ``(N, T, T)``.
    Store it with :func:`unconstrain` applied for training.
    """

    features: AbstractFeatureMap  # leaves with a leading heads axis
    params: NeuronAstrocyteParams  # stacked (N,)
    protocol: Protocol = eqx.field(static=True)
    method: FastPath | DiffraxPath = eqx.field(static=True)

    def __init__(self, num_heads: int, num_features: int, head_dim: int, *, key, params=None,
                 feature_map: str = "learned", hidden: int = 64, protocol="bidirectional", method=None,
                 dtype=None):
        keys = jax.random.split(key, num_heads)
        self.features = eqx.filter_vmap(
            lambda k: learned_feature_map(k, num_features, head_dim, feature_map, hidden=hidden, dtype=dtype)
        )(keys)
        params = NeuronAstrocyteParams(dtype=dtype) if params is None else params
        self.params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_heads,)) + 0.0, params)
        self.protocol = as_protocol(protocol)
        self.method = FastPath() if method is None else method

    @property
    def num_heads(self) -> int:
        return self.params.tau_h.shape[0]

    def __call__(self, q, k, v, key_mask=None):
        """``key_mask`` ``(T,)`` (shared by the heads): keys where False are skipped."""
        def one(fmap, P, q, k, v):
            return simulate_head(fmap, P, q, k, v, self.protocol, self.method, key_mask)

        return eqx.filter_vmap(one)(self.features, self.params, q, k, v)

    def log_response(self, q, k, v, key_mask=None):
        """``(y, log a)``: as :meth:`__call__` with the astrocyte response as its logarithm,
        finite where ``a`` itself overflows float32 (teacher normalisers beyond ``e^88``
        occur in long windows): what training compares with ``log Z``."""
        def one(fmap, P, q, k, v):
            sol = solve_head(fmap, P, q, k, v, self.protocol, self.method, key_mask=key_mask)
            return sol.y, sol.log_a

        return eqx.filter_vmap(one)(self.features, self.params, q, k, v)

    def attention(self, q, k, key_mask=None):
        causal = self.protocol.causal
        m = None if key_mask is None else jnp.asarray(key_mask, q.dtype)
        return eqx.filter_vmap(lambda f, q, k: _implied_weights(f, q, k, m, causal))(self.features, q, k)
