"""Statistical and numerical tests of the feature maps (features.py) and the closed-form
oracles (oracles.py), checked against independent numpy implementations.

conftest.py enables float64 globally; float32 tests cast their inputs explicitly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import astrojax as aj
from astrojax.features import (
    CosineFeatures,
    LearnedExpFeatures,
    PerformerFeatures,
    SaturatingFeatures,
    make_feature_map,
    orthogonal_gaussian,
)

from conftest import rel_err


# ----------------------------------------------------------------------------- numpy refs


def np_performer(x, W):
    """Paper's positive random features, written independently in numpy (float64)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    m = W.shape[0]
    return np.exp(x @ W.T - 0.5 * np.sum(x * x, axis=-1, keepdims=True)) / np.sqrt(m)


def np_softmax_attention(q, k, v, causal):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    T, D = q.shape
    s = D ** -0.25
    logits = (q * s) @ (k * s).T
    y = np.zeros((T, v.shape[1]))
    Z = np.zeros(T)
    for t in range(T):
        n = t + 1 if causal else T
        w = np.exp(logits[t, :n])
        Z[t] = w.sum()
        y[t] = (w[:, None] * v[:n]).sum(0) / Z[t]
    return y, Z


def np_weighted_rfa(q, k, v, W, weight):
    """y_t = sum_tau weight(t,tau) v_tau K_t,tau / sum_tau weight(t,tau) K_t,tau."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    T, D = q.shape
    s = D ** -0.25
    pq, pk = np_performer(q * s, W), np_performer(k * s, W)
    y = np.zeros((T, v.shape[1]))
    a = np.zeros(T)
    for t in range(T):
        num = np.zeros(v.shape[1])
        den = 0.0
        for tau in range(T):
            w = weight(t, tau)
            if w == 0.0:
                continue
            K = float(pq[t] @ pk[tau])
            num += w * K * v[tau]
            den += w * K
        y[t] = num / den
        a[t] = den
    return y, a


def np_rfa(q, k, v, W, causal):
    return np_weighted_rfa(q, k, v, W, lambda t, tau: 1.0 if (not causal or tau <= t) else 0.0)


def np_leaky_rfa(q, k, v, W, decay, causal):
    """Documented windows: bidirectional writes 0..T-1 then reads T..2T-1; causal writes
    token t in window 2t and reads it in window 2t+1; weight exp(-decay (j_read - i_write))."""
    T = np.asarray(q).shape[0]

    def weight(t, tau):
        if causal:
            if tau > t:
                return 0.0
            j, i = 2 * t + 1, 2 * tau
        else:
            j, i = T + t, tau
        return math.exp(-decay * (j - i))

    return np_weighted_rfa(q, k, v, W, weight)


def _qkvW(seed, T=6, D=4, Dv=3, m=16, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = scale * rng.normal(size=(T, D))
    k = scale * rng.normal(size=(T, D))
    v = rng.normal(size=(T, Dv))
    W = rng.normal(size=(m, D))
    return tuple(a.astype(dtype) for a in (q, k, v, W))


def _pairs(n, D, norm, seed=0):
    """n pairs (x, y) of vectors of the given norm, shape (n, 2, D)."""
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(n, 2, D))
    return norm * P / np.linalg.norm(P, axis=-1, keepdims=True)


def _keys(seed, n=None):
    """PRNG key(s) with the "rbg" implementation: same statistics as threefry for these
    tests, but it compiles several times faster (keeps the file within its time budget)."""
    key = jax.random.key(seed, impl="rbg")
    return key if n is None else jax.random.split(key, n)


def _kernel_draws(name, X, m, ndraws, seed):
    """phi(x).phi(y) for each pair of X (n, 2, D), over ndraws independent maps -> (ndraws, n)."""
    D = X.shape[-1]
    X = jnp.asarray(X)

    @jax.jit
    @jax.vmap
    def est(key):
        f = make_feature_map(name, key, m, D)
        p = f(X)
        return jnp.sum(p[:, 0] * p[:, 1], axis=-1)

    return np.asarray(est(_keys(seed, ndraws)))


# ------------------------------------------------------------------ unbiasedness / variance


@pytest.mark.parametrize("name", ["performer", "orthogonal"])
def test_positive_features_unbiased(name):
    X = _pairs(4, 4, 0.6)
    exact = np.exp(np.sum(X[:, 0] * X[:, 1], -1))
    e = _kernel_draws(name, X, m=64, ndraws=2000, seed=1)
    assert np.all(e > 0)
    se = e.std(0, ddof=1) / np.sqrt(e.shape[0])
    z = (e.mean(0) - exact) / se
    assert np.all(np.abs(z) < 4.5), f"{name}: z-scores {z}, means {e.mean(0)}, exact {exact}"


def test_cosine_features_signed_and_unbiased():
    X = _pairs(4, 4, 0.6, seed=3)
    exact = np.exp(np.sum(X[:, 0] * X[:, 1], -1))
    e = _kernel_draws("cosine", X, m=64, ndraws=2000, seed=2)
    se = e.std(0, ddof=1) / np.sqrt(e.shape[0])
    z = (e.mean(0) - exact) / se
    assert np.all(np.abs(z) < 4.5), f"cosine: z-scores {z}"
    f = make_feature_map("cosine", _keys(0), 64, 4)
    assert not f.positive
    phi = np.asarray(f(jnp.asarray(X.reshape(-1, 4))))
    assert (phi < 0).any() and (phi > 0).any()
    with pytest.raises(TypeError):
        f.log_features(jnp.asarray(X[0]))


def test_orthogonal_rows_are_marginally_standard_gaussian():
    """Each row of orthogonal_gaussian must be N(0, I) (that is what makes the ORF
    estimator unbiased): zero mean, identity covariance; rows within a block orthogonal."""
    D, m, n = 4, 8, 4000
    R = np.asarray(
        jax.jit(jax.vmap(lambda k: orthogonal_gaussian(k, m, D)))(
            _keys(0, n)
        )
    )
    # orthogonality inside each D x D block
    for b in range(m // D):
        blk = R[:, b * D:(b + 1) * D]
        G = np.einsum("nid,njd->nij", blk, blk)
        off = G - np.einsum("nii->ni", G)[:, :, None] * np.eye(D)
        assert np.max(np.abs(off)) < 1e-10
    # squared norms ~ chi^2_D: mean D
    sq = np.sum(R**2, -1)
    assert abs(sq.mean() - D) < 5 * sq.std() / np.sqrt(sq.size)
    # marginal mean 0 (per row, per coordinate): SE of each mean is 1/sqrt(n)
    mean = R.mean(0)
    assert np.max(np.abs(mean)) < 5 / np.sqrt(n), f"row means not zero:\n{mean}"
    # marginal covariance identity
    for i in range(m):
        C = np.cov(R[:, i, :].T)
        assert np.max(np.abs(C - np.eye(D))) < 0.15, f"row {i} covariance:\n{C}"


def test_orthogonal_features_lower_variance_than_iid():
    D, m = 8, 16
    X = _pairs(32, D, 0.6, seed=5)
    e_iid = _kernel_draws("performer", X, m=m, ndraws=20000, seed=11)
    e_orf = _kernel_draws("orthogonal", X, m=m, ndraws=20000, seed=12)
    # compare mean squared error around the exact kernel (bias counts against ORF too)
    exact = np.exp(np.sum(X[:, 0] * X[:, 1], -1))
    mse_iid = np.mean((e_iid - exact) ** 2, 0)
    mse_orf = np.mean((e_orf - exact) ** 2, 0)
    ratio = mse_orf / mse_iid
    assert np.median(ratio) < 0.95, f"median MSE ratio orth/iid = {np.median(ratio)}"
    assert np.mean(ratio < 1.0) > 0.75


# ----------------------------------------------------------------------- other feature maps


def test_saturating_map_is_clipped():
    m, D, rate_max = 32, 4, 3.0
    key = _keys(4)
    f = make_feature_map("saturating", key, m, D, rate_max=rate_max)
    assert isinstance(f, SaturatingFeatures)
    x = jnp.asarray(2.0 * np.random.default_rng(5).normal(size=(50, D)))
    phi = np.asarray(f(x))
    cap = rate_max / np.sqrt(m)
    assert np.all(phi <= cap * (1 + 1e-12))
    assert np.any(np.isclose(phi, cap, rtol=1e-12)), "clipping never active in this test"
    # where not clipped it equals the performer map
    ref = np_performer(x, f.W)
    free = ref < cap
    np.testing.assert_allclose(phi[free], ref[free], rtol=1e-12)
    np.testing.assert_allclose(phi[~free], cap, rtol=1e-12)
    assert np.all(np.isfinite(np.asarray(f.log_features(1e3 * x))))


def test_learned_normalized_features_sum_to_one():
    f = LearnedExpFeatures.random(_keys(0), 12, 5, normalize=True)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 5)))
    phi = np.asarray(f(x))
    assert np.all(phi > 0)
    np.testing.assert_allclose(phi.sum(-1), 1.0, rtol=1e-12)
    g = make_feature_map("learned", _keys(0), 12, 5, normalize=True)
    np.testing.assert_allclose(np.asarray(g(x)).sum(-1), 1.0, rtol=1e-12)
    # unnormalised with b=0 and center_norm reduces to the performer map
    h = LearnedExpFeatures(f.W)
    np.testing.assert_allclose(np.asarray(h(x)), np_performer(x, f.W), rtol=1e-12)


def test_dendritic_features_match_numpy_and_reduce_to_performer():
    from astrojax.features import DendriticExpFeatures

    rng = np.random.default_rng(4)
    m, D, n = 10, 4, 6
    W1, b1, W2, Wl, b2 = (rng.normal(size=s) for s in ((n, D), (n,), (m, n), (m, D), (m,)))
    x = rng.normal(size=(7, D))
    pre = x @ W1.T + b1
    gelu = 0.5 * pre * (1 + np.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))  # tanh form
    ref = np.exp(gelu @ W2.T + x @ Wl.T + b2 - 0.5 * (x * x).sum(-1, keepdims=True)) / math.sqrt(m)
    f = DendriticExpFeatures(W1, b1, W2, Wl, b2)
    np.testing.assert_allclose(np.asarray(f(x)), ref, rtol=1e-10)
    # with W2 = 0 it is the performer map with Wl (the paper's construction at init)
    g = DendriticExpFeatures.init(_keys(1), m, D, n, w2_scale=0.0)
    np.testing.assert_allclose(np.asarray(g(x)), np_performer(x, np.asarray(g.Wl)), rtol=1e-12)
    assert aj.make_feature_map("dendritic", _keys(1), m, D, hidden=n).W2.shape == (m, n)
    check_grads(lambda W2: f.__class__(W1, b1, W2, Wl, b2)(x).sum(), (jnp.asarray(W2),), order=1,
                modes=["rev"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"`W2` must have shape \(10, 6\)"):
        DendriticExpFeatures(W1, b1, W2[:, :3], Wl, b2)
    with pytest.raises(ValueError, match="last dimension D=4"):
        f(x[:, :3])


def test_performer_features_match_numpy():
    W = np.random.default_rng(0).normal(size=(16, 4))
    x = np.random.default_rng(1).normal(size=(5, 4))
    f = PerformerFeatures(W)
    np.testing.assert_allclose(np.asarray(f(x)), np_performer(x, W), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f.log_features(x)), np.log(np_performer(x, W)), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ oracles


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_matches_numpy(causal):
    q, k, v, _ = _qkvW(0, T=7, D=5, Dv=3)
    y, Z = aj.softmax_attention(q, k, v, causal=causal)
    y_ref, Z_ref = np_softmax_attention(q, k, v, causal)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(Z), Z_ref, rtol=1e-12)
    # the D**-1/4 scaling is applied inside: an unscaled implementation differs
    y_unscaled, _ = np_softmax_attention(q * 5**0.25, k * 5**0.25, v, causal)
    assert rel_err(y, y_unscaled) > 1e-3
    if causal:
        np.testing.assert_allclose(np.asarray(y[0]), v[0], rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_random_feature_attention_matches_numpy(causal):
    q, k, v, W = _qkvW(1, T=7, D=4, Dv=3, m=16)
    y, a = aj.random_feature_attention(q, k, v, W, causal=causal)
    y_ref, a_ref = np_rfa(q, k, v, W, causal)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(a), a_ref, rtol=1e-10)
    # a_t = phi(q~_t) . sum_tau phi(k~_tau)
    s = 4 ** -0.25
    pq, pk = np_performer(q * s, W), np_performer(k * s, W)
    csum = np.cumsum(pk, 0) if causal else np.broadcast_to(pk.sum(0), pk.shape)
    np.testing.assert_allclose(np.asarray(a), np.sum(pq * csum, -1), rtol=1e-10)
    # same result through a feature-map object
    y2, a2 = aj.random_feature_attention(q, k, v, PerformerFeatures(W), causal=causal)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y), rtol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
def test_leaky_rfa_decay_zero_is_rfa(causal):
    q, k, v, W = _qkvW(2)
    y0, a0 = aj.leaky_random_feature_attention(q, k, v, W, decay=0.0, causal=causal)
    y, a = aj.random_feature_attention(q, k, v, W, causal=causal)
    np.testing.assert_allclose(np.asarray(y0), np.asarray(y), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(a0), np.asarray(a), rtol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("decay", [0.05, 0.7])
def test_leaky_rfa_matches_numpy(causal, decay):
    q, k, v, W = _qkvW(3)
    y, a = aj.leaky_random_feature_attention(q, k, v, W, decay=decay, causal=causal)
    y_ref, a_ref = np_leaky_rfa(q, k, v, W, decay, causal)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(a), a_ref, rtol=1e-10)
    # decay actually changes the bidirectional/causal result
    y_nl, _ = np_rfa(q, k, v, W, causal)
    assert rel_err(y, y_nl) > 1e-4


def test_rfa_converges_to_softmax_like_inverse_sqrt_m():
    T, D, Dv, nseeds = 16, 8, 3, 20
    ms = [16, 64, 256, 1024, 4096]

    rng = np.random.default_rng(3)
    q = 0.5 * rng.normal(size=(nseeds, T, D))
    k = 0.5 * rng.normal(size=(nseeds, T, D))
    v = rng.normal(size=(nseeds, T, Dv))

    @jax.jit
    @jax.vmap
    def err(q, k, v, W):
        ys, _ = aj.softmax_attention(q, k, v)
        yr, _ = aj.random_feature_attention(q, k, v, W)
        return jnp.linalg.norm(yr - ys) / jnp.linalg.norm(ys)

    meds = [float(np.median(np.asarray(err(q, k, v, rng.normal(size=(nseeds, m, D)))))) for m in ms]
    slope = np.polyfit(np.log(ms), np.log(meds), 1)[0]
    assert np.all(np.diff(meds) < 0), f"median errors not decreasing: {meds}"
    assert -0.7 < slope < -0.3, f"slope {slope}, medians {meds}"


# ----------------------------------------------------------------------------- float32

# jitted entry points: one compilation per dtype instead of many eager op compilations
_rfa_jit = jax.jit(lambda *a, causal: aj.random_feature_attention(*a, causal=causal, log=True), static_argnames="causal")
_softmax_jit = jax.jit(lambda *a, causal: aj.softmax_attention(*a, causal=causal, log=True), static_argnames="causal")
_leaky_jit = jax.jit(aj.leaky_random_feature_attention, static_argnames="causal")


def _large_inputs(seed, T=16, D=8, Dv=3, m=64, norm=30.0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(T, D))
    k = rng.normal(size=(T, D))
    q *= norm / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= norm / np.linalg.norm(k, axis=-1, keepdims=True)
    return q, k, rng.normal(size=(T, Dv)), rng.normal(size=(m, D))


@pytest.mark.parametrize("causal", [False, True])
def test_float32_large_inputs_finite_and_accurate(causal):
    q, k, v, W = _large_inputs(0)
    D = q.shape[1]
    logits = (q @ k.T) / np.sqrt(D)
    assert np.max(np.abs(logits)) > 100  # exp would overflow float32 (max ~ exp(88.7))
    f32 = [a.astype(np.float32) for a in (q, k, v, W)]

    y32, _ = _rfa_jit(*f32, causal=causal)
    y64, _ = _rfa_jit(q, k, v, W, causal=causal)
    assert y32.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y32)))
    assert rel_err(y32, y64) < 1e-3

    ys32, _ = _softmax_jit(*f32[:3], causal=causal)
    ys64, _ = _softmax_jit(q, k, v, causal=causal)
    assert ys32.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(ys32)))
    assert rel_err(ys32, ys64) < 1e-3



def test_float32_log_features_finite_for_large_inputs():
    q, _, _, W = _large_inputs(1)
    D = q.shape[1]
    x = jnp.asarray((q * D ** -0.25).astype(np.float32))
    W32 = W.astype(np.float32)
    maps = [
        PerformerFeatures(W32),
        SaturatingFeatures(W32),
        LearnedExpFeatures(W32),
        LearnedExpFeatures(W32, normalize=True),
        make_feature_map("orthogonal", _keys(0), 64, D, dtype=jnp.float32),
    ]
    for fm in maps:
        lf = fm.log_features(x)
        assert lf.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(lf))), type(fm).__name__
        # and they agree with the float64 computation
        lf64 = jax.tree.map(lambda a: a.astype(np.float64) if hasattr(a, "dtype") else a, fm).log_features(
            x.astype(np.float64)
        )
        assert rel_err(lf, lf64) < 1e-5, type(fm).__name__


def test_float32_causal_first_token_antialigned_key():
    """Causal t=0 attends only to k_0, so y_0 = v_0 exactly, whatever q_0, k_0 are.
    With |q_0| = |k_0| = 30 and k_0 = -q_0 the single kernel value is ~exp(-318); the
    global shift must not make the whole row underflow in float32 (0/0 -> NaN)."""
    q, k, v, W = _large_inputs(0, T=4)
    k[0] = -q[0]
    f32 = [a.astype(np.float32) for a in (q, k, v, W)]
    y64, _ = _rfa_jit(q, k, v, W, causal=True)
    np.testing.assert_allclose(np.asarray(y64[0]), v[0], rtol=1e-10)
    y32, _ = _rfa_jit(*f32, causal=True)
    assert np.all(np.isfinite(np.asarray(y32))), np.asarray(y32)
    np.testing.assert_allclose(np.asarray(y32[0]), v[0], rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_float32_matches_float64_ordinary_inputs(causal):
    q, k, v, W = _qkvW(7, T=10, D=8, Dv=4, m=64)
    f32 = [a.astype(np.float32) for a in (q, k, v, W)]
    y32, a32 = _rfa_jit(*f32, causal=causal)
    y64, a64 = _rfa_jit(q, k, v, W, causal=causal)
    assert y32.dtype == jnp.float32 and a32.dtype == jnp.float32
    assert rel_err(y32, y64) < 1e-5
    assert rel_err(a32, a64) < 1e-5
    ys32, Z32 = _softmax_jit(*f32[:3], causal=causal)
    ys64, Z64 = _softmax_jit(q, k, v, causal=causal)
    assert ys32.dtype == jnp.float32
    assert rel_err(ys32, ys64) < 1e-5
    assert rel_err(Z32, Z64) < 1e-5
    yl32, _ = _leaky_jit(*f32, decay=0.3, causal=causal)
    yl64, _ = _leaky_jit(q, k, v, W, decay=0.3, causal=causal)
    assert yl32.dtype == jnp.float32
    assert rel_err(yl32, yl64) < 1e-5


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [False, True])
def test_rfa_gradients_match_finite_differences(causal):
    q, k, v, W = (jnp.asarray(a) for a in _qkvW(8, T=5, D=4, Dv=2, m=8))

    @jax.jit
    def f(W, q, k, v):
        y, a = aj.random_feature_attention(q, k, v, W, causal=causal)
        return y, jnp.log(a)

    check_grads(f, (W, q, k, v), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_softmax_and_leaky_gradients_match_finite_differences():
    q, k, v, W = (jnp.asarray(a) for a in _qkvW(9, T=5, D=4, Dv=2, m=8))
    check_grads(jax.jit(lambda q, k, v: aj.softmax_attention(q, k, v, causal=True)), (q, k, v), order=1,
                modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)
    check_grads(jax.jit(lambda W, q, k, v: aj.leaky_random_feature_attention(q, k, v, W, decay=0.2)[0]),
                (W, q, k, v), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)

