"""Gradients through the simulated dynamics against central finite differences (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astrojax as aj
from astrojax.dynamics import PARAM_NAMES

GENERIC = dict(tau_h=0.3, tau_a=0.2, tau_y=0.25, tau_H=0.7, tau_p=1.3, eta_H=1.5, eta_p=0.8,
               lambda_H=0.1, lambda_p=0.2)


def _fd_check(loss, tree, eps=1e-6, rtol=1e-5, n_probe=6, seed=0):
    """Compare jax.grad with central differences along random directions."""
    g = jax.jit(jax.grad(loss))(tree)
    loss = jax.jit(loss)
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    for _ in range(n_probe):
        dirs = [jnp.asarray(rng.normal(size=np.shape(x))) for x in leaves]
        d = jax.tree.unflatten(treedef, dirs)
        plus = jax.tree.map(lambda x, u: x + eps * u, tree, d)
        minus = jax.tree.map(lambda x, u: x - eps * u, tree, d)
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        an = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), dirs))
        assert abs(fd - an) <= rtol * max(1.0, abs(fd)), (fd, an)
    return g


def _inputs(T=5, D=4, Dv=3, m=8):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(2), 4)
    return (jax.random.normal(k1, (T, D)), jax.random.normal(k2, (T, D)),
            jax.random.normal(k3, (T, Dv)), jax.random.normal(k4, (m, D)))


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
@pytest.mark.parametrize("path", ["fast", "diffrax"])
def test_grad_params_and_weights(kind, path):
    q, k, v, W = _inputs()
    method = aj.FastPath(64) if path == "fast" else aj.DiffraxPath(rtol=1e-11, atol=1e-13)
    P = aj.NeuronAstrocyteParams(**GENERIC)

    def loss(tree):
        P, W, q, k, v = tree
        y, a = aj.simulate_attention(q, k, v, W, protocol=kind, params=P, method=method)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.log(a))

    g = _fd_check(loss, (P, W, q, k, v), rtol=1e-5 if path == "fast" else 1e-4)
    # every time constant, gain and leak receives a gradient
    for n in PARAM_NAMES:
        assert np.isfinite(getattr(g[0], n)) and getattr(g[0], n) != 0.0, n


def test_grad_projections_through_layer():
    key = jax.random.PRNGKey(0)
    att = aj.NeuronAstrocyteAttention(8, 2, 8, key=key, params=aj.NeuronAstrocyteParams(**GENERIC),
                                      method=aj.FastPath(64))
    x = jax.random.normal(key, (5, 8))
    params, static = eqx.partition(att, eqx.is_inexact_array)

    def loss(p):
        return jnp.sum(jnp.tanh(eqx.combine(p, static)(x)))

    g = _fd_check(loss, params, rtol=1e-5)
    assert float(jnp.abs(g.W_Q.weight).sum()) > 0 and float(jnp.abs(g.W_K.weight).sum()) > 0
