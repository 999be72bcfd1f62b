"""The simulator against independent references: closed forms (timescale limit), scipy
solve_ivp on the same equations, measured convergence orders, and the two paths."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from scipy_reference import scipy_simulate

import astrojax as aj
from astrojax.dynamics import PARAM_NAMES

PROTOCOLS = ["bidirectional", "causal"]
FAST = aj.FastPath()
DFX64 = aj.DiffraxPath(rtol=1e-10, atol=1e-12)
DFX32 = aj.DiffraxPath(rtol=1e-6, atol=1e-8)
LIMIT = dict(tau_h=0.01, tau_a=0.01, tau_y=0.01)  # fast neurons/astrocyte, no leak


def _head(T=6, D=4, Dv=3, m=16, seed=0, dtype=jnp.float64, scale=1.0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (
        scale * jax.random.normal(k1, (T, D), dtype),
        scale * jax.random.normal(k2, (T, D), dtype),
        jax.random.normal(k3, (T, Dv), dtype),
        jax.random.normal(k4, (m, D), dtype),
    )


def _drives(q, k, W):
    s = q.shape[1] ** -0.25
    fm = aj.PerformerFeatures(W)
    return np.asarray(fm(k * s)), np.asarray(fm(q * s))


def _scipy_readout(q, k, v, W, kind, P, d, gain_control=True):
    """scipy reference, with `a` normalised like the library's (by the write integral,
    the read gain and, with gain control, the gain-control scales)."""
    fk, fq = _drives(q, k, W)
    ref = scipy_simulate(fk, fq, np.asarray(v), protocol=kind, write_delay=d, gain_control=gain_control,
                         **{n: float(getattr(P, n)) for n in PARAM_NAMES})
    kp = float(P.decay_p)
    L = 1.0 - d
    I1 = L if kp == 0 else (1 - np.exp(-kp * L)) / kp
    T = q.shape[0]
    n = np.full(T, T) if kind == "bidirectional" else np.arange(1, T + 1)
    norm = float(P.eta_p / P.tau_p) * I1 / (1.0 if gain_control else n)
    return ref["y"], ref["a"] / norm * np.exp(ref["a_log_scale"])


# ---------------------------------------------------------------- timescale limit


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("path", ["fast", "diffrax"])
def test_timescale_limit_float64(kind, path):
    q, k, v, W = _head()
    P = aj.NeuronAstrocyteParams(**LIMIT)
    y, a = aj.simulate_attention(q, k, v, W, protocol=kind, params=P,
                                 method=FAST if path == "fast" else DFX64)
    y_ref, a_ref = aj.random_feature_attention(q, k, v, W, causal=kind == "causal")
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(a, a_ref) <= 1e-5


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("path", ["fast", "diffrax"])
def test_timescale_limit_float32(kind, path):
    q, k, v, W = _head(T=8, D=8, Dv=4, m=32, dtype=jnp.float32)
    P = aj.NeuronAstrocyteParams(**LIMIT, dtype=jnp.float32)
    y, a = aj.simulate_attention(q, k, v, W, protocol=kind, params=P,
                                 method=FAST if path == "fast" else DFX32)
    assert y.dtype == jnp.float32 and a.dtype == jnp.float32
    y_ref, a_ref = aj.random_feature_attention(*(x.astype(jnp.float64) for x in (q, k, v, W)),
                                               causal=kind == "causal")
    assert rel_err(y, y_ref) <= 1e-3
    assert rel_err(a, a_ref) <= 1e-3


def test_diffrax_path_takes_the_drive_dtype_with_wider_parameters():
    """float64 parameters (the default under x64) with float32 inputs: the Diffrax path runs
    in float32 (its stage buffers reject wider vector-field outputs) and matches the fast path."""
    q, k, v, W = _head(T=8, D=8, Dv=4, m=32, dtype=jnp.float32)
    P = aj.NeuronAstrocyteParams(**LIMIT, dtype=jnp.float64)
    yd, ad = aj.simulate_attention(q, k, v, W, protocol="causal", params=P, method=DFX32)
    yf, af = aj.simulate_attention(q, k, v, W, protocol="causal", params=P, method=FAST)
    assert yd.dtype == jnp.float32 and ad.dtype == jnp.float32
    assert rel_err(yd, yf) < 1e-3 and rel_err(ad, af) < 1e-3


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_float32_matches_float64(kind):
    q, k, v, W = _head(T=8, D=8, Dv=4, m=32)
    P = aj.NeuronAstrocyteParams(tau_h=0.1, tau_a=0.2, tau_y=0.15, lambda_H=0.05, lambda_p=0.05)
    y64, a64 = aj.simulate_attention(q, k, v, W, protocol=kind, params=P)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, W)]
    P32 = jax.tree.map(lambda x: x.astype(jnp.float32), P)
    y32, a32 = aj.simulate_attention(*f32, protocol=kind, params=P32)
    assert rel_err(y32, y64) < 1e-5 and rel_err(a32, a64) < 1e-5


def test_write_delay_removes_onset_lag():
    """docs/model.md, "Timescale limit and measured floors": with the gate open all window the read-out is off by ~0.31 tau_h;
    a 0.2-window delay brings it to the 1e-6 level (tau = 0.02)."""
    q, k, v, W = _head(T=16, seed=3)
    P = aj.NeuronAstrocyteParams(tau_h=0.02, tau_a=0.02, tau_y=0.02)
    y_ref, _ = aj.random_feature_attention(q, k, v, W)
    errs = {}
    for d in (0.0, 0.1, 0.2):
        y, _ = aj.simulate_attention(q, k, v, W, params=P, protocol=aj.Protocol("bidirectional", d))
        errs[d] = rel_err(y, y_ref)
    assert 1e-3 < errs[0.0] < 3e-2
    assert errs[0.1] < 3e-4 and errs[0.2] < 1e-5
    assert errs[0.0] > 10 * errs[0.1] > 10 * errs[0.2]


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("path", ["fast", "diffrax"])
def test_leaky_limit(kind, path):
    """With leak the read-out is the exponentially recency-weighted RFA; the error is
    first order in tau_a (the lag of `a` behind the decaying p . h)."""
    q, k, v, W = _head()
    kappa = 0.3
    y_ref, a_ref = aj.leaky_random_feature_attention(q, k, v, W, decay=kappa, causal=kind == "causal")
    errs = []
    for tau in (4e-3, 2e-3):
        P = aj.NeuronAstrocyteParams(tau_h=tau, tau_a=tau, tau_y=tau, lambda_H=kappa, lambda_p=kappa)
        y, a = aj.simulate_attention(q, k, v, W, protocol=kind, params=P,
                                     method=FAST if path == "fast" else DFX64)
        errs.append((rel_err(y, y_ref), rel_err(a, a_ref)))
        assert errs[-1][0] < 3 * kappa * tau and errs[-1][1] < 3 * kappa * tau
    # first order: halving tau halves the error
    assert 1.6 < errs[0][1] / errs[1][1] < 2.4


# ----------------------------------------------------- independent scipy reference

GENERIC = dict(tau_h=0.3, tau_a=0.2, tau_y=0.25, tau_H=0.7, tau_p=1.3, eta_H=1.5, eta_p=0.8,
               lambda_H=0.1, lambda_p=0.2)


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("d,gc", [(0.0, True), (0.3, True), (0.3, False)])
def test_diffrax_matches_scipy(kind, d, gc):
    q, k, v, W = _head()
    P = aj.NeuronAstrocyteParams(**GENERIC)
    y_ref, a_ref = _scipy_readout(q, k, v, W, kind, P, d, gc)
    y, a = aj.simulate_attention(q, k, v, W, protocol=aj.Protocol(kind, d, gc), params=P, method=DFX64)
    assert rel_err(y, y_ref) < 1e-7
    assert rel_err(a, a_ref) < 1e-7


@pytest.mark.parametrize("kind", PROTOCOLS)
@pytest.mark.parametrize("gc", [True, False])
@pytest.mark.parametrize("form", ["auto", "recurrent"])
def test_fast_matches_scipy(kind, gc, form):
    """Away from the limit (slow time constants): a is exact, y within 1e-6 of scipy with
    128 sub-steps (fourth order: 1.5e-3 / 6e-6 / 2e-8 with 8 / 32 / 128)."""
    q, k, v, W = _head()
    P = aj.NeuronAstrocyteParams(**GENERIC)
    y_ref, a_ref = _scipy_readout(q, k, v, W, kind, P, 0.2, gc)
    y, a = aj.simulate_attention(q, k, v, W, protocol=aj.Protocol(kind, 0.2, gc), params=P,
                                 method=aj.FastPath(n_sub=128, form=form))
    assert rel_err(a, a_ref) < 1e-8
    assert rel_err(y, y_ref) < 1e-6


def test_trace_matches_scipy():
    q, k, v, W = _head(T=4)
    P = aj.NeuronAstrocyteParams(**GENERIC)
    fk, fq = _drives(q, k, W)
    ref = scipy_simulate(fk, fq, np.asarray(v), protocol="causal", write_delay=0.2, return_trace=True,
                         gain_control=True, **{n: float(getattr(P, n)) for n in PARAM_NAMES})
    _, _, tr = aj.simulate_attention(q, k, v, W, protocol="causal", params=P, method=DFX64, trace=True)
    t = np.asarray(tr.t)
    for name, ref_name in (("a", "a_t"), ("p_sum", "psum_t"), ("h_mean", "hmean_t")):
        ours = np.interp(ref["t"], t, np.asarray(getattr(tr, name)))
        inside = np.abs(ref["t"] - np.round(ref["t"])) > 0.06  # away from window edges
        assert rel_err(ours[inside], ref[ref_name][inside]) < 2e-2
    # fast-path trace: window-end samples equal the dense trace at window ends
    _, _, trf = aj.simulate_attention(q, k, v, W, protocol="causal", params=P,
                                      method=aj.FastPath(64), trace=True)
    ends = np.isclose(t, np.round(t)) & (t > 0)
    np.testing.assert_allclose(np.asarray(tr.p_sum)[ends], np.asarray(trf.p_sum), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(tr.a)[ends], np.asarray(trf.a), rtol=1e-8)


# ---------------------------------------------------------------- convergence orders


def _order(errors, steps):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("solver,expected", [(diffrax.Euler(), 1.0), (diffrax.Heun(), 2.0)])
def test_fixed_step_diffrax_order(solver, expected):
    q, k, v, W = _head(T=3)
    P = aj.NeuronAstrocyteParams(**GENERIC)
    y_ref, _ = aj.simulate_attention(q, k, v, W, params=P, method=DFX64, protocol=aj.Protocol("causal", 0.5))
    ns = np.array([16, 32, 64, 128])
    errs = []
    for n in ns:
        meth = aj.DiffraxPath(solver=solver, adaptive=False, dt0=float(1.0 / n))
        y, _ = aj.simulate_attention(q, k, v, W, params=P, method=meth, protocol=aj.Protocol("causal", 0.5))
        errs.append(rel_err(y, y_ref))
    assert abs(_order(errs, ns) - expected) < 0.25, errs


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_fast_path_fourth_order(kind):
    """The read-out mesh with Richardson extrapolation converges at (about) fourth order
    away from the timescale limit (measured: 4.2e-4, 3.5e-6, 1.4e-8 at 8, 32, 128)."""
    q, k, v, W = _head()
    P = aj.NeuronAstrocyteParams(**GENERIC)
    y_ref, _ = aj.simulate_attention(q, k, v, W, protocol=kind, params=P, method=DFX64)
    ns = np.array([8, 16, 32])
    errs = [rel_err(aj.simulate_attention(q, k, v, W, protocol=kind, params=P,
                                          method=aj.FastPath(int(n)))[0], y_ref) for n in ns]
    assert _order(errs, ns) > 3.0, errs


# ------------------------------------------------------------ paths and transforms


def test_window_recurrence_lowerings_match_a_loop():
    """The window-to-window recurrences z_j = exp(logA_j) z_{j-1} + B_j have two lowerings
    (a sequential scan on CPU, a blocked log-depth form on accelerators): both equal a
    plain Python loop, forward and reverse, with an initial value, at lengths that are
    and are not multiples of the block; the running maximum likewise."""
    from astrojax.integrate import _cummax, _linrec_blocked, _linrec_scan

    rng = np.random.default_rng(0)
    for J in (1, 7, 32, 33, 300):
        la = -rng.exponential(2.0, J)
        la[rng.random(J) < 0.2] = 0.0  # skipped windows
        B = rng.normal(size=(J, 3))
        z0 = rng.normal(size=3)
        ref, prev = np.zeros((J, 3)), z0.copy()
        for j in range(J):
            prev = np.exp(la[j]) * prev + B[j]
            ref[j] = prev
        for f in (_linrec_scan, lambda a, b, z: _linrec_blocked(a, b, z, C=8)):
            np.testing.assert_allclose(np.asarray(f(jnp.asarray(la), jnp.asarray(B), jnp.asarray(z0))), ref,
                                       rtol=1e-12, atol=1e-12)
        x = rng.normal(size=J)
        np.testing.assert_array_equal(np.asarray(_cummax(jnp.asarray(x), -0.3)),
                                      np.maximum.accumulate(np.maximum(x, -0.3)))


def test_window_recurrence_derivatives_match_a_loop():
    """The recurrences' custom JVP (the tangent recurrence) gives the derivatives of a
    plain Python loop in reverse mode, forward mode and second order."""
    from astrojax.integrate import _linrec

    rng = np.random.default_rng(1)
    J = 9
    la = jnp.asarray(-rng.exponential(1.0, J))
    B = jnp.asarray(rng.normal(size=(J, 3)))
    z0 = jnp.asarray(rng.normal(size=3))

    def loop(la, B, z0):
        z, out = z0, []
        for j in range(J):
            z = jnp.exp(la[j]) * z + B[j]
            out.append(z)
        return jnp.stack(out)

    ours = lambda la, B, z0: jnp.sum(jnp.sin(_linrec(la, B, z0)))  # noqa: E731
    ref = lambda la, B, z0: jnp.sum(jnp.sin(loop(la, B, z0)))  # noqa: E731
    for transform in (jax.grad, jax.jacfwd):
        for a, b in zip(transform(ours, (0, 1, 2))(la, B, z0), transform(ref, (0, 1, 2))(la, B, z0)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.hessian(ours)(la, B, z0)), np.asarray(jax.hessian(ref)(la, B, z0)),
                               rtol=1e-10, atol=1e-12)


def test_forward_mode_through_the_fast_path_equals_reverse_mode():
    """``jax.jacfwd`` works through the whole fast path (the fit's default Jacobian) and
    equals ``jax.jacrev``, both protocols."""
    q, k, v, W = _head(T=6)
    P = aj.NeuronAstrocyteParams(**GENERIC)
    for kind in PROTOCOLS:
        def f(tau, W):
            y, a = aj.simulate_attention(q, k, v, W, protocol=kind, params=eqx.tree_at(lambda p: p.tau_h, P, tau))
            return jnp.concatenate([y.ravel(), jnp.log(a)])

        for a, b in zip(jax.jacfwd(f, (0, 1))(P.tau_h, W), jax.jacrev(f, (0, 1))(P.tau_h, W)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_accelerator_lowering_of_the_fast_path_agrees(kind, monkeypatch):
    """The whole fast path (read-outs and their gradient) with the accelerator lowering of
    every platform-dependent piece forced on this CPU equals the CPU lowering."""
    q, k, v, W = _head(T=40)
    P = aj.NeuronAstrocyteParams(**GENERIC)

    def run():
        f = lambda q: aj.simulate_attention(q, k, v, W, protocol=kind, params=P)  # noqa: E731
        y, a = f(q)
        return y, a, jax.grad(lambda q: jnp.sum(f(q)[0] ** 2))(q)

    cpu = run()
    monkeypatch.setattr(jax.lax, "platform_dependent", lambda *args, cpu, default: default(*args))
    acc = run()
    for x, y in zip(cpu, acc):
        assert rel_err(x, y) < 1e-11


def test_jit_vmap_over_batch_and_heads():
    B, Hh = 3, 2
    q, k, v, W = _head(T=5)
    qb = jnp.stack([q * (1 + 0.1 * i) for i in range(B)])
    Ws = jnp.stack([W, W[::-1]])
    P = aj.NeuronAstrocyteParams(tau_h=0.1, tau_a=0.1, tau_y=0.1)
    Ps = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), P)

    def one(q, W, P):
        return aj.simulate_attention(q, k, v, W, params=P)[0]

    f = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, None, None)))
    out = f(qb, Ws, Ps)
    assert out.shape == (B, Hh, 5, 3)
    for b in range(B):
        for h in range(Hh):
            Ph = jax.tree.map(lambda x: x[h], Ps)
            np.testing.assert_allclose(out[b, h], one(qb[b], Ws[h], Ph), rtol=1e-10)


def test_diffrax_vmaps():
    q, k, v, W = _head(T=4)
    qb = jnp.stack([q, 0.5 * q])
    f = jax.jit(jax.vmap(lambda q: aj.simulate_attention(q, k, v, W, method=DFX64)[0]))
    out = f(qb)
    np.testing.assert_allclose(out[1], aj.simulate_attention(0.5 * q, k, v, W, method=DFX64)[0], rtol=1e-9)


def test_layer_matches_softmax_mode_on_small_inputs():
    """Multi-head module in the limit tracks its own softmax mode as m grows."""
    key = jax.random.PRNGKey(1)
    x = 0.3 * jax.random.normal(key, (8, 16))
    errs = []
    for m in (64, 4096):
        att = aj.NeuronAstrocyteAttention(16, 2, m, key=key, feature_map="orthogonal")
        sm = aj.NeuronAstrocyteAttention(16, 2, m, key=key, mode="softmax")
        errs.append(rel_err(att(x), sm(x)))
    assert errs[1] < errs[0] and errs[1] < 0.05
