"""The attention head with Li--Rinzel astrocyte processes (astrojax.astro.network) against an
independent scipy solution of the whole network (hidden neurons, IP3, calcium, h_IP3R,
Hebbian synapses, shunted outputs: one ODE system, typed again from the docstring), against
the closed form (random-feature attention) in the regime the docstring states, and its
gradient against finite differences."""
import jax
import jax.numpy as jnp
import equinox as eqx
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from astrojax.astro import LiRinzelParams
from astrojax.astro.network import LiRinzelHead, LiRinzelHeadParams, LiRinzelMethod, solve_li_rinzel_head
from astrojax.features import LearnedExpFeatures, PerformerFeatures

NEST = dict(Ca_tot=2.0, IP3_0=0.16, Kd_IP3_1=0.13, Kd_IP3_2=0.9434, Kd_act=0.08234, Kd_inh=1.049,
            Km_SERCA=0.1, delta_IP3=0.0002, k_IP3R=0.0002, rate_IP3R=0.006, rate_L=0.00011, rate_SERCA=0.0009,
            ratio_ER_cyt=0.185, tau_IP3=7142.0)


def _lr(P, ip3, ca, h):
    ca = np.clip(ca, 0.0, P["Ca_tot"])
    ca_er = (P["Ca_tot"] - ca) / P["ratio_ER_cyt"]
    mi, ni = ip3 / (ip3 + P["Kd_IP3_1"]), ca / (ca + P["Kd_act"])
    dca = (P["ratio_ER_cyt"] * (P["rate_IP3R"] * (mi * ni * h) ** 3 + P["rate_L"]) * (ca_er - ca)
           - P["rate_SERCA"] * ca * ca / (P["Km_SERCA"] ** 2 + ca * ca))
    a_h = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])
    return dca, a_h * (1 - h) - P["k_IP3R"] * ca * h


def _steady(P, ip3):
    a_h = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])
    ca = brentq(lambda c: _lr(P, ip3, c, a_h / (a_h + P["k_IP3R"] * c))[0], 1e-6, 1.0, xtol=1e-15, rtol=1e-15)
    return ca, a_h / (a_h + P["k_IP3R"] * ca)


def reference(P, lk, lq, v, tau_h, tau_y, nu, eta, L, ts_extra=()):
    """The whole head as one ODE (scipy LSODA, window by window). Returns y at the read-window
    ends (T, Dv) and the process states (IP3, Ca, h_IP3R) at ``ts_extra``."""
    lk, lq, v = (np.asarray(x, np.float64) for x in (lk, lq, v))
    T, m = lk.shape
    Dv = v.shape[1]
    lse = lambda x: np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1)) + x.max(-1)  # noqa: E731
    fk = m * np.exp(lk - lse(lk)[:, None])
    fq = m * np.exp(lq - lse(lq)[:, None])
    w = np.exp(lse(lk) - lse(lk).max())
    ca0, h0 = _steady(P, P["IP3_0"])
    eps = 1e-6
    chi = (_steady(P, P["IP3_0"] + eps)[0] - _steady(P, P["IP3_0"] - eps)[0]) / (2 * eps)
    gain = P["delta_IP3"] * nu
    # state: h (m), IP3 (m), Ca (m), hR (m), H (Dv*m), y (Dv)
    y = np.concatenate([np.zeros(m), np.full(m, P["IP3_0"]), np.full(m, ca0), np.full(m, h0), np.zeros(Dv * m),
                        np.zeros(Dv)])
    out_y, samples = [], {}
    ts_extra = np.asarray(ts_extra, float)
    for j in range(2 * T):
        write = j < T
        f = fk[j] if write else fq[j - T]
        ww = w[j] if write else 0.0
        vt = v[j] if write else np.zeros(Dv)

        def rhs(t, s):
            h, ip3, ca, hr = s[:m], s[m:2 * m], s[2 * m:3 * m], s[3 * m:4 * m]
            H = s[4 * m:4 * m + Dv * m].reshape(Dv, m)
            yy = s[4 * m + Dv * m:]
            dca, dhr = _lr(P, ip3, ca, hr)
            dip3 = (P["IP3_0"] - ip3) / P["tau_IP3"] + gain * ww * h
            dH = ww * np.outer(vt, h)
            if write:
                dy = np.zeros(Dv)
            else:
                a = np.sum(h * np.maximum(np.clip(ca, 0, P["Ca_tot"]) - ca0, 0.0)) / (T * chi * gain * L * m)
                dy = (eta * (H @ h) / (T * L * m) - a * yy) / tau_y
            return np.concatenate([(f - h) / tau_h, dip3, dca, dhr, dH.reshape(-1), dy])

        sel = (ts_extra >= j * L) & (ts_extra <= (j + 1) * L)
        sol = solve_ivp(rhs, (j * L, (j + 1) * L), y, method="LSODA", rtol=1e-10, atol=1e-13, dense_output=True)
        assert sol.success
        for t in ts_extra[sel]:
            samples[float(t)] = sol.sol(t)
        y = sol.y[:, -1]
        if not write:
            out_y.append(y[4 * m + Dv * m:].copy())
    st = np.stack([samples[float(t)] for t in ts_extra]) if len(ts_extra) else np.zeros((0, 4 * m))
    return np.stack(out_y), (st[:, m:2 * m], st[:, 2 * m:3 * m], st[:, 3 * m:4 * m])


def _episode(T=3, D=4, Dv=2, m=4, seed=0, scale=0.8):
    kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = scale * jax.random.normal(kq, (T, D), jnp.float64)
    k = scale * jax.random.normal(kk, (T, D), jnp.float64)
    v = jax.random.normal(kv, (T, Dv), jnp.float64)
    fmap = LearnedExpFeatures(PerformerFeatures.orthogonal(kw, m, D, jnp.float64).W)
    s = D ** -0.25
    return q, k, v, fmap, fmap.log_features(k * s), fmap.log_features(q * s)


def test_matches_scipy_solution_of_the_whole_network():
    """NEST's defaults, 2 s windows, a drive strong enough to push calcium well above rest:
    the process states at arbitrary times and the read-outs at the read-window ends agree
    with the scipy solution of the full ODE system."""
    q, k, v, fmap, lk, lq = _episode()
    P = LiRinzelHeadParams(nu=0.15, window=2000.0, tau_h=15.0, tau_y=30.0, eta=1.3, dtype=jnp.float64)
    ts = jnp.asarray([500.0, 2500.0, 5999.0, 7300.0, 11_900.0])
    sol = jax.jit(lambda lk, lq, v: solve_li_rinzel_head(P, lk, lq, v, LiRinzelMethod(n_mesh=64), ts))(lk, lq, v)
    assert bool(sol.ok)
    y_ref, (ip3_ref, ca_ref, hr_ref) = reference(NEST, lk, lq, v, 15.0, 30.0, 0.15, 1.3, 2000.0, np.asarray(ts))
    ip3, ca, hr = (np.asarray(x) for x in sol.ys)
    np.testing.assert_allclose(ip3, ip3_ref, rtol=1e-9)
    np.testing.assert_allclose(ca, ca_ref, rtol=2e-6)
    np.testing.assert_allclose(hr, hr_ref, rtol=2e-6)
    assert np.max(ca_ref) > 0.1  # calcium well above its resting 0.07 uM: the nonlinear regime
    err = np.linalg.norm(np.asarray(sol.y) - y_ref, axis=1) / np.linalg.norm(y_ref, axis=1)
    assert np.max(err) < 2e-3, err  # the graded-mesh exponential steps for the shunted outputs


def test_fixed_steps_close_to_adaptive():
    q, k, v, fmap, lk, lq = _episode(seed=1)
    P = LiRinzelHeadParams(nu=0.02, window=2000.0, dtype=jnp.float64)
    a = jax.jit(lambda: solve_li_rinzel_head(P, lk, lq, v, LiRinzelMethod()))()
    b = jax.jit(lambda: solve_li_rinzel_head(P, lk, lq, v, LiRinzelMethod(adaptive=False, steps_per_window=8)))()
    np.testing.assert_allclose(np.asarray(b.y), np.asarray(a.y), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(b.log_a), np.asarray(a.log_a), atol=1e-3)


def test_linear_regime_gives_random_feature_attention():
    """The docstring's regime (weak drive, no IP3 decay, reads long against the calcium
    relaxation, fast neurons): log_a tends to the RFA normaliser and y to RFA; the error
    falls with the drive (the nonlinearity of calcium release is the remaining term)."""
    q, k, v, fmap, lk, lq = _episode(T=4, D=8, Dv=3, m=16, seed=2)
    K = np.exp(np.asarray(lq)) @ np.exp(np.asarray(lk)).T
    Z = K.sum(1)
    y_rfa = (K @ np.asarray(v)) / Z[:, None]
    errs = []
    run = jax.jit(lambda P: solve_li_rinzel_head(P, lk, lq, v))  # one compilation for both drives
    for nu in (1e-4, 2.5e-5):
        P = LiRinzelHeadParams(astro=LiRinzelParams(tau_IP3=1e9, dtype=jnp.float64), nu=nu, window=60_000.0,
                               dtype=jnp.float64)
        sol = run(P)
        a_err = np.max(np.abs(np.exp(np.asarray(sol.log_a)) / Z - 1))
        y_err = np.max(np.linalg.norm(np.asarray(sol.y) - y_rfa, axis=1) / np.linalg.norm(y_rfa, axis=1))
        errs.append((a_err, y_err))
    assert errs[1][0] < 0.01 and errs[1][1] < 0.01, errs
    # the deviation is the curvature of calcium release: linear in the drive
    assert errs[0][0] > 3 * errs[1][0] and errs[0][1] > 3 * errs[1][1], errs


@pytest.mark.slow
def test_gradient_matches_finite_differences():
    q, k, v, fmap, lk, lq = _episode(seed=3)
    y_target = jnp.ones((3, 2))
    method = LiRinzelMethod(adaptive=False, steps_per_window=8)

    def loss(log_nu, log_tau_ip3):
        astro = LiRinzelParams(dtype=jnp.float64)
        astro = eqx.tree_at(lambda p: p.tau_IP3, astro, jnp.exp(log_tau_ip3))
        P = eqx.tree_at(lambda p: (p.nu, p.astro), LiRinzelHeadParams(window=2000.0, dtype=jnp.float64),
                        (jnp.exp(log_nu), astro))
        sol = solve_li_rinzel_head(P, lk, lq, v, method)
        return jnp.sum((sol.y - y_target) ** 2) + jnp.sum(sol.log_a**2)

    x = (jnp.log(0.02), jnp.log(7142.0))
    g = jax.jit(jax.grad(loss, argnums=(0, 1)))(*x)
    loss = jax.jit(loss)
    for i in range(2):
        h = 1e-5
        xp = list(x)
        xm = list(x)
        xp[i] = x[i] + h
        xm[i] = x[i] - h
        fd = (loss(*xp) - loss(*xm)) / (2 * h)
        np.testing.assert_allclose(float(g[i]), float(fd), rtol=1e-4)


@pytest.mark.slow
def test_vmap_over_heads_matches_loop_and_head_call():
    eps = [_episode(seed=s) for s in (4, 5)]
    P = LiRinzelHeadParams(nu=0.02, window=2000.0, dtype=jnp.float64)
    lk = jnp.stack([e[4] for e in eps])
    lq = jnp.stack([e[5] for e in eps])
    v = jnp.stack([e[2] for e in eps])
    one = jax.jit(lambda a, b, c: solve_li_rinzel_head(P, a, b, c).y)
    batched = jax.vmap(one)(lk, lq, v)
    for i, e in enumerate(eps):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one(e[4], e[5], e[2])), rtol=1e-9)
    q, k, v1, fmap, _, _ = eps[0]
    y, a = jax.jit(lambda q, k, v: LiRinzelHead(fmap, P)(q, k, v))(q, k, v1)
    np.testing.assert_allclose(np.asarray(y), np.asarray(batched[0]), rtol=1e-9)


def test_signed_feature_map_is_rejected():
    from astrojax.features import make_feature_map

    fmap = make_feature_map("cosine", jax.random.PRNGKey(0), 8, 4)
    q = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="positive feature map"):
        LiRinzelHead(fmap, LiRinzelHeadParams())(q, q, jnp.ones((2, 2)))
