"""Equinox modules: multi-head neuron--astrocyte attention, a transformer block, a stack.

:class:`NeuronAstrocyteAttention` is a drop-in for softmax self-attention on one
sequence ``(T, d_model)`` (``jax.vmap`` it for batches). Each head has its own hidden
population (feature map), synapses, processes and astrocyte (MODEL.md: one astrocytic
domain per head); head outputs are concatenated and mixed by ``W_O``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validate import as_array, check_int
from .dynamics import NeuronAstrocyteParams
from .features import FEATURE_MAPS, AbstractFeatureMap, make_feature_map
from .integrate import DiffraxPath, FastPath, integrate
from .oracles import softmax_attention
from .protocol import Protocol, as_protocol
from .simulate import head_drives

__all__ = ["NeuronAstrocyteAttention", "TransformerBlock", "TransformerStack"]


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

    @property
    def head_dim(self) -> int:
        return self.W_Q.out_features // self.num_heads

    def heads(self, x):
        """Per-head ``(y, a)`` for one sequence ``x`` ``(T, d_model)``: ``y`` is
        ``(heads, T, Dh)``, ``a`` is ``(heads, T)`` (``Z`` in softmax mode)."""
        x = as_array("x", x, 2)
        if x.shape[1] != self.W_Q.in_features:
            raise ValueError(f"`x` must have shape (T, {self.W_Q.in_features}), got {x.shape}")
        T = x.shape[0]
        H, Dh = self.num_heads, self.head_dim

        def split(lin):
            return jax.vmap(lin)(x).reshape(T, H, Dh).transpose(1, 0, 2)

        q, k, v = split(self.W_Q), split(self.W_K), split(self.W_V)
        if self.mode == "softmax":
            return jax.vmap(lambda q, k, v: softmax_attention(q, k, v, causal=self.protocol.causal))(q, k, v)

        def one(fmap, P, q, k, v):
            fk, fq = head_drives(q, k, fmap)
            r = integrate(P, fk, fq, v, self.protocol, self.method)
            return r.y, r.a

        return eqx.filter_vmap(one)(self.features, self.params, q, k, v)

    def __call__(self, x):
        y, _ = self.heads(x)
        T = x.shape[0]
        y = y.transpose(1, 0, 2).reshape(T, -1)
        return jax.vmap(self.W_O)(y)


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

    def __call__(self, x):
        if self.pre_norm:
            x = x + self.attn(jax.vmap(self.ln1)(x))
            return x + self._mlp(jax.vmap(self.ln2)(x))
        x = jax.vmap(self.ln1)(x + self.attn(x))
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

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x
