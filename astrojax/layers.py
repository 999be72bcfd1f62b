"""Equinox modules: multi-head attention (softmax and neuron--astrocyte), a transformer
block, a stack.

:class:`SoftmaxAttention` is the teacher's attention; :class:`NeuronAstrocyteAttention`
is a drop-in for it on one sequence ``(T, d_model)`` (``jax.vmap`` for batches). Each
neuron--astrocyte head has its own hidden population (feature map), synapses, processes
and astrocyte (docs/model.md: one astrocytic domain per head); head outputs are concatenated
and mixed by ``W_O``. :meth:`NeuronAstrocyteAttention.from_softmax` transfers a trained
teacher's projections (the paper's "weight transfer").

Both attention modules accept an optional ``mask`` ``(T,)`` (False = padding): padded
keys take no part in any sum (for the neuron--astrocyte network: they are never written).
Both have ``record(x, mask)`` returning the output and a :class:`HeadRecord`.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validate import as_array, check_int
from .dynamics import NeuronAstrocyteParams
from .features import FEATURE_MAPS, AbstractFeatureMap, make_feature_map, shifted_features
from .integrate import DiffraxPath, FastPath
from .oracles import softmax_weights
from .protocol import Protocol, as_protocol
from .simulate import simulate_head

__all__ = [
    "HeadRecord",
    "SoftmaxAttention",
    "NeuronAstrocyteAttention",
    "TransformerBlock",
    "TransformerStack",
]


class HeadRecord(NamedTuple):
    """Per-head internals of one attention layer on one sequence.

    ``q, k, v, y``: ``(heads, T, Dh)`` (projections as produced, before the ``D**-1/4``
    scaling; ``y`` the head outputs before ``W_O``); ``attn``: ``(heads, T, T)`` attention
    weights (for a neuron--astrocyte layer the weights implied by its features,
    ``phi(q~_t).phi(k~_tau) / a_t``); ``Z``: ``(heads, T)`` the normaliser -- the softmax
    ``Z_t`` of a teacher, the simulated astrocyte response ``a_t`` of a student.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    attn: jax.Array
    Z: jax.Array
    y: jax.Array


def _check_x(x, d_model):
    x = as_array("x", x, 2)
    if x.shape[1] != d_model:
        raise ValueError(f"`x` must have shape (T, {d_model}), got {tuple(x.shape)}")
    return x


def _check_mask(mask, T):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (T,):
        raise ValueError(f"`mask` must have shape ({T},) (one flag per token), got {tuple(mask.shape)}")
    return mask.astype(bool)


def _qkv(W_Q, W_K, W_V, x, H):
    """Project ``x`` (T, d) to per-head ``q, k, v`` of shape (H, T, Dh)."""
    T = x.shape[0]

    def split(lin):
        return jax.vmap(lin)(x).reshape(T, H, -1).transpose(1, 0, 2)

    return split(W_Q), split(W_K), split(W_V)


def _merge(W_O, y):
    """Concatenate head outputs (H, T, Dh) and mix them by ``W_O`` -> (T, d)."""
    H, T, Dh = y.shape
    return jax.vmap(W_O)(y.transpose(1, 0, 2).reshape(T, H * Dh))


class SoftmaxAttention(eqx.Module):
    """Multi-head softmax self-attention (the teacher), BERT/ViT layout.

    Args:
        d_model: model width; ``num_heads`` must divide it.
        num_heads: heads.
        key: PRNG key for the projections.
        use_bias: biases on the projections.
        causal: mask future tokens (decoders).
    """

    W_Q: eqx.nn.Linear
    W_K: eqx.nn.Linear
    W_V: eqx.nn.Linear
    W_O: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    def __init__(self, d_model: int, num_heads: int, *, key, use_bias: bool = True, causal: bool = False):
        d_model = check_int("d_model", d_model)
        num_heads = check_int("num_heads", num_heads)
        if d_model % num_heads:
            raise ValueError(f"`num_heads`={num_heads} must divide `d_model`={d_model}")
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.W_Q = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kq)
        self.W_K = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kk)
        self.W_V = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kv)
        self.W_O = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=ko)
        self.num_heads = num_heads
        self.causal = bool(causal)

    @property
    def head_dim(self) -> int:
        return self.W_Q.out_features // self.num_heads

    def record(self, x, mask=None):
        """``(output (T, d_model), HeadRecord)`` for one sequence ``x`` ``(T, d_model)``."""
        x = _check_x(x, self.W_Q.in_features)
        mask = _check_mask(mask, x.shape[0])
        q, k, v = _qkv(self.W_Q, self.W_K, self.W_V, x, self.num_heads)
        w, lse = jax.vmap(lambda q, k: softmax_weights(q, k, causal=self.causal, key_mask=mask))(q, k)
        y = w @ v
        return _merge(self.W_O, y), HeadRecord(q=q, k=k, v=v, attn=w, Z=jnp.exp(lse), y=y)

    def heads(self, x, mask=None):
        """Per-head ``(y (heads, T, Dh), Z (heads, T))``."""
        _, rec = self.record(x, mask)
        return rec.y, rec.Z

    def __call__(self, x, mask=None):
        return self.record(x, mask)[0]


class NeuronAstrocyteAttention(eqx.Module):
    """Multi-head self-attention computed by simulated neuron--astrocyte networks.

    Args:
        d_model: model width; ``num_heads`` must divide it.
        num_heads: heads (= astrocytes).
        num_features: ``m``, hidden neurons per head.
        key: PRNG key (projections and hidden-neuron weights).
        feature_map: name in :data:`astrojax.features.FEATURE_MAPS`.
        params: :class:`NeuronAstrocyteParams` shared by all heads at init (each head
            gets its own copy; they can be trained apart).
        protocol: ``"bidirectional"`` / ``"causal"`` or a :class:`Protocol`.
        method: ``FastPath()`` (default) or ``DiffraxPath(...)``.
        use_bias: biases on the projections.
        mode: ``"simulate"`` (the ODE) or ``"softmax"`` (the teacher's exact attention
            with the same projections, for comparisons).

    To build one from a trained softmax layer, use :meth:`from_softmax`.
    """

    W_Q: eqx.nn.Linear
    W_K: eqx.nn.Linear
    W_V: eqx.nn.Linear
    W_O: eqx.nn.Linear
    features: AbstractFeatureMap  # stacked over heads (leading axis)
    params: NeuronAstrocyteParams  # stacked over heads
    num_heads: int = eqx.field(static=True)
    protocol: Protocol = eqx.field(static=True)
    method: FastPath | DiffraxPath = eqx.field(static=True)
    mode: str = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_features: int,
        *,
        key,
        feature_map: str = "performer",
        params: NeuronAstrocyteParams | None = None,
        protocol: str | Protocol = "bidirectional",
        method: FastPath | DiffraxPath | None = None,
        use_bias: bool = True,
        mode: str = "simulate",
    ):
        d_model = check_int("d_model", d_model)
        num_heads = check_int("num_heads", num_heads)
        num_features = check_int("num_features", num_features)
        if d_model % num_heads:
            raise ValueError(f"`num_heads`={num_heads} must divide `d_model`={d_model}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"`feature_map` must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        if mode not in ("simulate", "softmax"):
            raise ValueError(f"`mode` must be 'simulate' or 'softmax', got {mode!r}")
        if params is not None and not isinstance(params, NeuronAstrocyteParams):
            raise TypeError(f"`params` must be NeuronAstrocyteParams, got {type(params).__name__}")
        kq, kk, kv, ko, kf = jax.random.split(key, 5)
        self.W_Q = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kq)
        self.W_K = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kk)
        self.W_V = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=kv)
        self.W_O = eqx.nn.Linear(d_model, d_model, use_bias=use_bias, key=ko)
        Dh = d_model // num_heads
        self.features = eqx.filter_vmap(lambda k: make_feature_map(feature_map, k, num_features, Dh))(
            jax.random.split(kf, num_heads)
        )
        params = params if params is not None else NeuronAstrocyteParams()
        self.params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_heads,)) + 0.0, params)
        self.num_heads = num_heads
        self.protocol = as_protocol(protocol)
        self.method = method if method is not None else FastPath()
        self.mode = mode

    @classmethod
    def from_softmax(
        cls,
        attn: SoftmaxAttention,
        num_features: int,
        *,
        key,
        feature_map: str | AbstractFeatureMap = "performer",
        params: NeuronAstrocyteParams | None = None,
        protocol: str | Protocol | None = None,
        method: FastPath | DiffraxPath | None = None,
    ) -> "NeuronAstrocyteAttention":
        """Weight transfer: a neuron--astrocyte layer with ``attn``'s projections
        (``W_Q, W_K, W_V, W_O`` and biases copied).

        The hidden neurons' input weights are sampled (``feature_map`` a name, one
        independent draw per head from ``key``) or given (``feature_map`` a feature map
        whose leaves carry a leading ``heads`` axis, e.g.
        ``eqx.filter_vmap(PerformerFeatures)(W)`` with ``W`` of shape ``(heads, m, Dh)``). ``protocol`` defaults to causal for a causal
        teacher, bidirectional otherwise.
        """
        if not isinstance(attn, SoftmaxAttention):
            raise TypeError(f"`attn` must be a SoftmaxAttention, got {type(attn).__name__}")
        if protocol is None:
            protocol = "causal" if attn.causal else "bidirectional"
        d = attn.W_Q.in_features
        name = feature_map if isinstance(feature_map, str) else "performer"
        new = cls(
            d, attn.num_heads, num_features, key=key, feature_map=name, params=params,
            protocol=protocol, method=method, use_bias=attn.W_Q.bias is not None,
        )
        if isinstance(feature_map, AbstractFeatureMap):
            lead = jax.tree.leaves(feature_map)[0].shape[0]
            if lead != attn.num_heads:
                raise ValueError(
                    f"`feature_map` must carry a leading heads axis of size {attn.num_heads}, got {lead}"
                )
            new = eqx.tree_at(lambda n: n.features, new, feature_map)
        return eqx.tree_at(
            lambda n: (n.W_Q, n.W_K, n.W_V, n.W_O), new, (attn.W_Q, attn.W_K, attn.W_V, attn.W_O)
        )

    @property
    def head_dim(self) -> int:
        return self.W_Q.out_features // self.num_heads

    def _run(self, x, mask, weights: bool):
        x = _check_x(x, self.W_Q.in_features)
        mask = _check_mask(mask, x.shape[0])
        q, k, v = _qkv(self.W_Q, self.W_K, self.W_V, x, self.num_heads)
        causal = self.protocol.causal
        if self.mode == "softmax":
            w, lse = jax.vmap(lambda q, k: softmax_weights(q, k, causal=causal, key_mask=mask))(q, k)
            return HeadRecord(q=q, k=k, v=v, attn=w, Z=jnp.exp(lse), y=w @ v)

        def one(fmap, P, q, k, v):
            y, a = simulate_head(fmap, P, q, k, v, self.protocol, self.method, mask)
            w = _implied_weights(fmap, q, k, mask, causal) if weights else None
            return y, a, w

        y, a, w = eqx.filter_vmap(one)(self.features, self.params, q, k, v)
        return HeadRecord(q=q, k=k, v=v, attn=w, Z=a, y=y)

    def record(self, x, mask=None):
        """``(output (T, d_model), HeadRecord)`` for one sequence; ``HeadRecord.Z`` holds
        the simulated astrocyte response ``a`` and ``attn`` the feature-implied weights."""
        rec = self._run(x, mask, weights=True)
        return _merge(self.W_O, rec.y), rec

    def heads(self, x, mask=None):
        """Per-head ``(y, a)``: ``y`` ``(heads, T, Dh)``, ``a`` ``(heads, T)`` (``Z`` in
        softmax mode)."""
        rec = self._run(x, mask, weights=False)
        return rec.y, rec.Z

    def __call__(self, x, mask=None):
        return _merge(self.W_O, self._run(x, mask, weights=False).y)


def _implied_weights(fmap: AbstractFeatureMap, q, k, mask, causal: bool):
    """The attention weights ``phi(q~_t).phi(k~_tau) / sum_tau(...)`` of one head's
    features (the timescale-limit weights the simulated read-out applies)."""
    s = q.shape[-1] ** -0.25
    fq, _ = shifted_features(fmap, q * s, axis=-1)
    fk, _ = shifted_features(fmap, k * s)
    K = fq @ fk.T
    T = q.shape[0]
    if causal:
        K = K * jnp.tril(jnp.ones((T, T), K.dtype))
    if mask is not None:
        K = K * mask[None, :]
    return K / jnp.sum(K, axis=-1, keepdims=True)


class TransformerBlock(eqx.Module):
    """Post-LayerNorm transformer block (BERT layout) around any attention module:
    ``x = LN(x + attn(x)); x = LN(x + MLP(x))`` (``pre_norm=True``: ViT/GPT layout)."""

    attn: eqx.Module
    ln1: eqx.nn.LayerNorm
    mlp1: eqx.nn.Linear
    mlp2: eqx.nn.Linear
    ln2: eqx.nn.LayerNorm
    pre_norm: bool = eqx.field(static=True)

    def __init__(self, attn: eqx.Module, d_model: int, d_ff: int, *, key, pre_norm: bool = False, eps=1e-12):
        k1, k2 = jax.random.split(key)
        self.attn = attn
        self.ln1 = eqx.nn.LayerNorm(d_model, eps=eps)
        self.mlp1 = eqx.nn.Linear(d_model, d_ff, key=k1)
        self.mlp2 = eqx.nn.Linear(d_ff, d_model, key=k2)
        self.ln2 = eqx.nn.LayerNorm(d_model, eps=eps)
        self.pre_norm = pre_norm

    def _mlp(self, x):
        return jax.vmap(self.mlp2)(jax.nn.gelu(jax.vmap(self.mlp1)(x), approximate=False))

    def record(self, x, mask=None):
        """``(output, HeadRecord)`` of the block's attention for one sequence."""
        if self.pre_norm:
            att, rec = self.attn.record(jax.vmap(self.ln1)(x), mask)
            x = x + att
            return x + self._mlp(jax.vmap(self.ln2)(x)), rec
        att, rec = self.attn.record(x, mask)
        x = jax.vmap(self.ln1)(x + att)
        return jax.vmap(self.ln2)(x + self._mlp(x)), rec

    def __call__(self, x, mask=None):
        if self.pre_norm:
            x = x + self.attn(jax.vmap(self.ln1)(x), mask)
            return x + self._mlp(jax.vmap(self.ln2)(x))
        x = jax.vmap(self.ln1)(x + self.attn(x, mask))
        return jax.vmap(self.ln2)(x + self._mlp(x))


class TransformerStack(eqx.Module):
    """A stack of :class:`TransformerBlock` s with neuron--astrocyte attention."""

    blocks: list

    def __init__(self, num_layers: int, d_model: int, num_heads: int, num_features: int, d_ff: int, *, key, pre_norm=False, **attn_kwargs):
        num_layers = check_int("num_layers", num_layers)
        keys = jax.random.split(key, num_layers)
        self.blocks = []
        for kk in keys:
            ka, kb = jax.random.split(kk)
            attn = NeuronAstrocyteAttention(d_model, num_heads, num_features, key=ka, **attn_kwargs)
            self.blocks.append(TransformerBlock(attn, d_model, d_ff, key=kb, pre_norm=pre_norm))

    def __call__(self, x, mask=None):
        for b in self.blocks:
            x = b(x, mask)
        return x
