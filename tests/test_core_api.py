"""The one method API (``astrojax.solve``): exact masks at slow time constants, result codes
(also under jit), sample times off the window grid, fitting through the same core with a
learned feature map, and a property test over input scales against an independent
float64 numpy reference computed in log space."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy_reference import scipy_sample

import astrojax as aj
from astrojax.dynamics import PARAM_NAMES
from astrojax.fit import default_readout, make_episode, simulate_traces, ODESettings
from astrojax.simulate import solve_head

SLOW = dict(tau_h=0.1, tau_a=0.1, tau_y=0.1)


def _head(T=8, D=4, Dv=3, m=16, seed=0, dtype=jnp.float64):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(k1, (T, D), dtype), jax.random.normal(k2, (T, D), dtype),
            jax.random.normal(k3, (T, Dv), dtype), jax.random.normal(k4, (m, D), dtype))


# ---------------------------------------------------------------- exact masks


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
@pytest.mark.parametrize("pad", ["end", "middle"])
def test_masked_equals_truncated_at_slow_time_constants(kind, pad):
    """Padded tokens are skipped windows: the read-outs of the other tokens equal those of
    the truncated sequence to float32 rounding at tau_h = tau_a = tau_y = 0.1 (both forms
    of the fast path and the Diffrax path)."""
    q, k, v, W = _head(T=10, dtype=jnp.float32)
    keep = np.ones(10, bool)
    keep[[7, 8, 9] if pad == "end" else [2, 5]] = False
    P = aj.NeuronAstrocyteParams(**SLOW, dtype=jnp.float32)
    for method in (aj.FastPath(), aj.FastPath(form="recurrent")):
        y_m, a_m = aj.simulate_attention(q, k, v, W, protocol=kind, params=P, method=method, key_mask=keep)
        y_t, a_t = aj.simulate_attention(q[keep], k[keep], v[keep], W, protocol=kind, params=P, method=method)
        assert rel_err(y_m[keep], y_t) < 1e-6
        assert rel_err(a_m[keep], a_t) < 1e-6


def test_masked_equals_truncated_in_a_layer():
    """The same through NeuronAstrocyteAttention (float32, slow time constants)."""
    attn = aj.NeuronAstrocyteAttention(16, 2, 32, key=jax.random.PRNGKey(1),
                                       params=aj.NeuronAstrocyteParams(**SLOW, dtype=jnp.float32))
    x = jax.random.normal(jax.random.PRNGKey(2), (9, 16), jnp.float32)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], bool)
    out_m = attn(x, mask)[:6]
    out_t = attn(x[:6])
    assert rel_err(out_m, out_t) < 1e-6


# ---------------------------------------------------------------- result codes


def test_nan_input_is_a_result_code_and_an_error_under_jit():
    q, k, v, W = _head()
    qn = q.at[2, 1].set(jnp.nan)
    sol = solve_head(aj.PerformerFeatures(W), aj.NeuronAstrocyteParams(), qn, k, v, aj.Protocol(), aj.FastPath())
    assert sol.result == aj.RESULTS.nonfinite_input
    f = jax.jit(lambda q: aj.simulate_attention(q, k, v, W)[0])
    with pytest.raises(Exception, match="NaN or infinite"):
        jax.block_until_ready(f(qn))
    import equinox as eqx

    Pn = eqx.tree_at(lambda p: p.tau_y, aj.NeuronAstrocyteParams(), jnp.asarray(jnp.nan))
    sol = solve_head(aj.PerformerFeatures(W), Pn, q, k, v, aj.Protocol(), aj.FastPath())
    assert sol.result == aj.RESULTS.nonfinite_input


def test_successful_and_fixed_point_residual_reported():
    q, k, v, W = _head()
    sol = solve_head(aj.PerformerFeatures(W), aj.NeuronAstrocyteParams(), q, k, v, aj.Protocol("causal"),
                     aj.FastPath(settle_tol=1e-3))
    assert sol.result == aj.RESULTS.successful
    assert sol.stats["fixed_point_residual"].shape == (8,)
    # a slow read-out does not settle in its window: flagged when asked
    P = aj.NeuronAstrocyteParams(tau_y=5.0)
    sol = solve_head(aj.PerformerFeatures(W), P, q, k, v, aj.Protocol("causal"), aj.FastPath(settle_tol=1e-3))
    assert sol.result == aj.RESULTS.unsettled


# ---------------------------------------------------------------- sample times


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_sample_times_off_the_window_grid_fast_vs_diffrax(kind):
    """SaveAt(ts): the state at arbitrary times, fast path against the Diffrax path."""
    q, k, v, W = _head(T=4)
    P = aj.NeuronAstrocyteParams(tau_h=0.2, tau_a=0.15, tau_y=0.3, lambda_H=0.1, lambda_p=0.2)
    ts = np.array([0.0, 0.13, 1.0, 1.37, 2.5, 3.2, 4.91, 6.02, 7.77, 8.0])
    fn = lambda s: (s.a, s.y, s.p.sum(), s.h.mean())  # noqa: E731
    sf = solve_head(aj.PerformerFeatures(W), P, q, k, v, aj.Protocol(kind), aj.FastPath(n_sub=64),
                    aj.SaveAt(ts=jnp.asarray(ts), fn=fn))
    sd = solve_head(aj.PerformerFeatures(W), P, q, k, v, aj.Protocol(kind),
                    aj.DiffraxPath(rtol=1e-10, atol=1e-12), aj.SaveAt(ts=ts, fn=fn))
    for x, y in zip(sf.ys, sd.ys):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gain_control", [True, False])
def test_continuing_from_a_carry_equals_one_solve(gain_control):
    """Token-by-token simulation carrying ``Solution.final`` into ``init`` (the recurrent
    form, one token per solve) equals the whole sequence at once (the chunked causal
    form) in float32, and a split Diffrax solve equals an unsplit one: no recomputation
    of the prefix is needed to continue an episode."""
    T = 12
    q, k, v, W = _head(T=T, m=32, dtype=jnp.float32)
    fm = aj.PerformerFeatures(W)
    P = aj.NeuronAstrocyteParams(**SLOW, dtype=jnp.float32)
    pr = aj.Protocol("causal", gain_control=gain_control)
    whole = solve_head(fm, P, q, k, v, pr, aj.FastPath(chunk=4))
    step = jax.jit(lambda c, qt, kt, vt: solve_head(fm, P, qt, kt, vt, pr, aj.FastPath(), aj.SaveAt(final=True), init=c))
    c = aj.Carry.zeros(32, 3, jnp.float32)
    ys, As = [], []
    for t in range(T):
        s = step(c, q[t:t + 1], k[t:t + 1], v[t:t + 1])
        assert s.result == aj.RESULTS.successful
        c = s.final
        ys.append(s.y)
        As.append(s.a)
    assert rel_err(jnp.concatenate(ys), whole.y) < 2e-6
    assert rel_err(jnp.concatenate(As), whole.a) < 2e-6
    D = aj.DiffraxPath(rtol=1e-8, atol=1e-10)
    q64, k64, v64, W64 = _head(T=T, m=32)
    fm64 = aj.PerformerFeatures(W64)
    P64 = aj.NeuronAstrocyteParams(**SLOW)
    ref = solve_head(fm64, P64, q64, k64, v64, pr, D)
    first = solve_head(fm64, P64, q64[:5], k64[:5], v64[:5], pr, D, aj.SaveAt(final=True))
    rest = solve_head(fm64, P64, q64[5:], k64[5:], v64[5:], pr, D, init=first.final)
    assert rel_err(jnp.concatenate([first.y, rest.y]), ref.y) < 1e-10
    with pytest.raises(ValueError, match="init"):
        solve_head(fm64, P64, q64, k64, v64[:, :2], pr, D, init=first.final)


def test_fit_trace_simulator_learned_features_off_grid_vs_scipy():
    """The fit's trace simulator goes through the same core: a learned (non-performer)
    feature map and sample times off the window grid, against scipy solve_ivp."""
    q, k, v, _ = _head(T=4, D=4, m=8)
    fmap = aj.LearnedExpFeatures(jax.random.normal(jax.random.PRNGKey(5), (8, 4)) * 0.7,
                                 jax.random.normal(jax.random.PRNGKey(6), (8,)) * 0.3)
    P = dict(tau_h=0.15, tau_H=0.8, tau_p=1.2, tau_a=0.2, tau_y=0.25, eta_H=1.2, eta_p=0.9,
             lambda_H=0.05, lambda_p=0.1)
    params = aj.NeuronAstrocyteParams(**P)
    ts = np.array([0.31, 1.07, 2.5, 3.93, 5.11, 6.66, 7.99])
    s = q.shape[1] ** -0.25
    fk, fq = np.asarray(fmap(k * s)), np.asarray(fmap(q * s))
    ref = scipy_sample(fk, fq, np.asarray(v), ts, protocol="causal", write_delay=0.2, **P)
    ep = make_episode(q, k, v, "causal")
    readouts = {x: default_readout(x, w, 8, 3) for x, w in (("a", 1), ("p", 1), ("y", 3))}
    got = simulate_traces(params, fmap, ep, jnp.asarray(ts), readouts, ODESettings(n_sub=64))
    np.testing.assert_allclose(np.asarray(got["a"])[:, 0], ref["a"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got["p"])[:, 0], ref["p"].sum(1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got["y"]), ref["y"], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- input scales


def _rfa_log_reference(q, k, v, W, causal):
    """Random-feature attention in float64 numpy, entirely in log space (independent)."""
    q, k, v, W = (np.asarray(x, np.float64) for x in (q, k, v, W))
    s = q.shape[1] ** -0.25
    lf = lambda x: x @ W.T - 0.5 * np.sum(x * x, 1, keepdims=True) - 0.5 * np.log(W.shape[0])  # noqa: E731
    lq, lk = lf(q * s), lf(k * s)
    L = lq[:, None, :] + lk[None, :, :]  # (t, tau, m)
    M = L.max(-1, keepdims=True)
    logK = (M + np.log(np.exp(L - M).sum(-1, keepdims=True)))[..., 0]
    if causal:
        logK = np.where(np.tril(np.ones(logK.shape, bool)), logK, -np.inf)
    la = logK.max(1) + np.log(np.exp(logK - logK.max(1, keepdims=True)).sum(1))
    w = np.exp(logK - la[:, None])
    return w @ v, la


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_scale=st.floats(-3.0, np.log10(3.0)), seed=st.integers(0, 1000),
       causal=st.booleans(), f32=st.booleans())
@example(log_scale=0.375, seed=399, causal=True, f32=False)  # the ODE 1.7e-5 from its timescale limit
@example(log_scale=0.375, seed=0, causal=True, f32=True)  # 1.8e-3 from it: a tight Diffrax solve agrees to 6e-7
def test_property_input_scales_accurate(log_scale, seed, causal, f32):
    """q, k scaled by 1e-3 ... 3 (float32 and float64): with the normalised read gain the
    simulated network is finite and equals random-feature attention (timescale limit of
    the default time constants, to 1e-2: the ODE itself is that far from its limit at
    2-3x); log a matches the log-space reference. A fine mesh (n_sub = 32) keeps the integration error out of the
    comparison: the default's own accuracy is tested against a tight solve of the same
    ODE elsewhere."""
    dtype = jnp.float32 if f32 else jnp.float64
    q, k, v, W = _head(T=8, D=8, Dv=3, m=32, seed=seed, dtype=dtype)
    s = 10.0 ** log_scale
    y_ref, la_ref = _rfa_log_reference(s * q, s * k, v, W, causal)
    pr = aj.Protocol("causal" if causal else "bidirectional", read_gain="normalised")
    y, la = aj.simulate_attention(s * q, s * k, v, W, protocol=pr, log=True, method=aj.FastPath(n_sub=32))
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(la)))
    # the ODE's own distance from its timescale limit at tau = 0.02 grows with the input
    # scale (1.7e-5 in y at seed 399; 1.8e-3 for a causal float32 episode at 2.4x, seed 0,
    # where a tight float64 Diffrax solve of the same ODE is as far from it and the fast path
    # is 6e-7 from that solve): not an integration error, which the next test bounds
    tol = 1e-2
    assert rel_err(y, y_ref) < tol
    assert np.max(np.abs(np.asarray(la, np.float64) - la_ref)) < 1e-3 * max(1.0, np.max(np.abs(la_ref)))


@functools.lru_cache(maxsize=None)
def _jit_solve(causal, dtype, n_sub):
    pr = aj.Protocol("causal" if causal else "bidirectional", read_gain="normalised")
    P = aj.NeuronAstrocyteParams(dtype=dtype)
    return jax.jit(lambda q, k, v, W: solve_head(aj.PerformerFeatures(W), P, q, k, v, pr, aj.FastPath(n_sub=n_sub)))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_scale=st.floats(-3.0, 3.0), seed=st.integers(0, 1000), causal=st.booleans(), f32=st.booleans())
def test_property_any_scale_accurate_or_an_explicit_code(log_scale, seed, causal, f32):
    """q, k scaled by 1e-3 ... 1e3, float32 and float64: the simulated network is finite
    and, up to 3x, accurate (1e-4) against a float64 solve of the same ODE on a finer mesh, or its result is an explicit out-of-range code (never a silent zero, inf or
    NaN), and ``simulate_attention`` raises then. Where the float64 solve itself is out
    of range, so is the float32 one."""
    dtype = jnp.float32 if f32 else jnp.float64
    q, k, v, W = _head(T=8, D=8, Dv=3, m=32, seed=seed)
    s = 10.0 ** log_scale
    ref = _jit_solve(causal, jnp.float64, 32)(s * q, s * k, v, W)
    c = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    sol = _jit_solve(causal, dtype, 8)(c(s * q), c(s * k), c(v), c(W))
    flagged = (aj.RESULTS.drive_out_of_range, aj.RESULTS.response_out_of_range)
    # up to 3x the float32 read-out is within 1e-6 of the float64 one
    # (experiments/core/range_output.txt); beyond, the read-out's own discretisation error
    # at the default n_sub grows (6e-3 in float64 at seed 5's example against n_sub = 32):
    # there only finiteness or an explicit code is asserted -- a known shortfall
    tol = 1e-4 if s <= 3.0 else np.inf
    if sol.result == aj.RESULTS.successful:
        assert ref.result == aj.RESULTS.successful
        assert np.all(np.isfinite(np.asarray(sol.y))) and np.all(np.isfinite(np.asarray(sol.log_a)))
        assert rel_err(sol.y, ref.y) < tol
        assert np.max(np.abs(np.asarray(sol.log_a, np.float64) - np.asarray(ref.log_a))) < (
            tol * max(1.0, float(np.max(np.abs(ref.log_a)))))
    else:
        assert any(sol.result == r for r in flagged)
        pr = aj.Protocol("causal" if causal else "bidirectional", read_gain="normalised")
        with pytest.raises(Exception, match="range|underflow"):
            aj.simulate_attention(c(s * q), c(s * k), c(v), c(W), protocol=pr)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_scale=st.floats(-3.0, 3.0), seed=st.integers(0, 1000), causal=st.booleans())
def test_property_closed_forms_finite_at_any_scale(log_scale, seed, causal):
    """The closed forms (float32) at q, k scales 1e-3 ... 1e3: finite read-outs and log
    normalisers equal to the float64 log-space reference."""
    q, k, v, W = _head(T=8, D=8, Dv=3, m=32, seed=seed, dtype=jnp.float32)
    s = 10.0 ** log_scale
    y_ref, la_ref = _rfa_log_reference(s * q, s * k, v, W, causal)
    y, la = aj.random_feature_attention(s * q, s * k, v, W, causal=causal, log=True)
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(la)))
    assert np.max(np.abs(np.asarray(la, np.float64) - la_ref)) <= 1e-5 * max(1.0, np.max(np.abs(la_ref)))
    ys, lz = aj.softmax_attention(s * q, s * k, v, causal=causal, log=True)
    assert np.all(np.isfinite(np.asarray(ys))) and np.all(np.isfinite(np.asarray(lz)))
