"""Softmax attention layer, masks, and weight transfer to neuron--astrocyte layers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astrojax as aj
from astrojax.layers import SoftmaxAttention
from astrojax.teachers import DigitsViT, ViTConfig, to_neuron_astrocyte

from conftest import rel_err

FAST = aj.NeuronAstrocyteParams(tau_h=0.005, tau_a=0.005, tau_y=0.005)


def _np_softmax_layer(attn: SoftmaxAttention, x, mask=None):
    """Independent numpy multi-head attention with the layer's weights."""
    x = np.asarray(x, np.float64)
    lin = lambda l, z: z @ np.asarray(l.weight, np.float64).T + np.asarray(l.bias, np.float64)  # noqa: E731
    T, d = x.shape
    H = attn.num_heads
    Dh = d // H
    q, k, v = (lin(l, x).reshape(T, H, Dh).transpose(1, 0, 2) for l in (attn.W_Q, attn.W_K, attn.W_V))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(Dh)
    if mask is not None:
        s = np.where(np.asarray(mask)[None, None, :], s, -np.inf)
    Z = np.exp(s).sum(-1)
    w = np.exp(s) / Z[..., None]
    y = w @ v
    return lin(attn.W_O, y.transpose(1, 0, 2).reshape(T, d)), Z


def test_softmax_attention_matches_numpy():
    key = jax.random.PRNGKey(0)
    attn = SoftmaxAttention(24, 3, key=key)
    x = jax.random.normal(jax.random.PRNGKey(1), (9, 24))
    mask = jnp.arange(9) < 6
    for mk in (None, mask):
        out, rec = attn.record(x, mk)
        ref, Z = _np_softmax_layer(attn, x, mk)
        assert rel_err(out, ref) < 1e-10
        assert rel_err(rec.Z, Z) < 1e-10
        np.testing.assert_allclose(np.asarray(rec.attn).sum(-1), 1.0, rtol=1e-12)
        assert rec.q.shape == (3, 9, 8)


def test_mask_equals_truncation():
    key = jax.random.PRNGKey(2)
    T, n = 10, 7
    x = jax.random.normal(jax.random.PRNGKey(3), (T, 16))
    mask = jnp.arange(T) < n
    sm = SoftmaxAttention(16, 2, key=key)
    na = aj.NeuronAstrocyteAttention.from_softmax(sm, 64, key=key, params=FAST)
    for layer in (sm, na):
        full = layer(x, mask)[:n]
        trunc = layer(x[:n])
        assert rel_err(full, trunc) < 1e-6, type(layer).__name__


def test_from_softmax_copies_projections_and_equals_rfa():
    key = jax.random.PRNGKey(4)
    sm = SoftmaxAttention(32, 4, key=key)
    na = aj.NeuronAstrocyteAttention.from_softmax(sm, 128, key=jax.random.PRNGKey(5), params=FAST)
    for n in ("W_Q", "W_K", "W_V", "W_O"):
        for leaf in ("weight", "bias"):
            assert np.array_equal(getattr(getattr(na, n), leaf), getattr(getattr(sm, n), leaf))
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(6), (12, 32))
    out, rec = na.record(x)
    _, trec = sm.record(x)
    np.testing.assert_array_equal(rec.q, trec.q)
    for h in range(4):
        fmap = jax.tree.map(lambda z: z[h], na.features)
        y_cf, a_cf = aj.random_feature_attention(rec.q[h], rec.k[h], rec.v[h], fmap)
        assert rel_err(rec.y[h], y_cf) < 1e-5
        assert rel_err(rec.Z[h], a_cf) < 1e-5
        # the feature-implied attention weights reproduce the closed form too
        assert rel_err(rec.attn[h] @ rec.v[h], y_cf) < 1e-10


def test_from_softmax_given_features_and_errors():
    key = jax.random.PRNGKey(7)
    sm = SoftmaxAttention(16, 2, key=key)
    W = jax.random.normal(key, (2, 50, 8))
    stacked = eqx.filter_vmap(aj.PerformerFeatures)(W)
    na = aj.NeuronAstrocyteAttention.from_softmax(sm, 50, key=key, feature_map=stacked)
    assert np.array_equal(na.features.W, W)
    with pytest.raises(ValueError, match="leading heads axis"):
        aj.NeuronAstrocyteAttention.from_softmax(sm, 50, key=key, feature_map=aj.PerformerFeatures(W[0]))
    with pytest.raises(TypeError, match="`attn`"):
        aj.NeuronAstrocyteAttention.from_softmax("nope", 50, key=key)
    causal = SoftmaxAttention(16, 2, key=key, causal=True)
    assert aj.NeuronAstrocyteAttention.from_softmax(causal, 8, key=key).protocol.causal


def test_to_neuron_astrocyte_whole_model():
    cfg = ViTConfig(d_model=32, num_heads=2, num_layers=2, d_ff=64)
    teacher = DigitsViT(cfg, key=jax.random.PRNGKey(8))
    student = to_neuron_astrocyte(teacher, 4096, key=jax.random.PRNGKey(9), layers=[1], params=FAST)
    assert isinstance(student.blocks[0].attn, SoftmaxAttention)
    assert isinstance(student.blocks[1].attn, aj.NeuronAstrocyteAttention)
    image = jax.random.uniform(jax.random.PRNGKey(10), (8, 8))
    t_out, s_out = teacher.run(image), eqx.filter_jit(student.run)(image)
    assert rel_err(s_out.hidden[:2], t_out.hidden[:2]) < 1e-5  # layer 0 untouched
    assert rel_err(s_out.q[1], t_out.q[1]) < 1e-5  # same input to layer 1
    # layer 1: random features approximate the teacher's softmax (m = 4096, small inputs)
    assert rel_err(s_out.y[1], t_out.y[1]) < 0.3
    with pytest.raises(ValueError, match="`layers`"):
        to_neuron_astrocyte(teacher, 8, key=jax.random.PRNGKey(0), layers=[5])

