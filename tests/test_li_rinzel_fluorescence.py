"""GCaMP-like fluorescence observation model (astrojax.astro.fluorescence): closed forms,
an independent scipy solution of the binding kinetics, noise statistics, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from astrojax.astro.fluorescence import IndicatorParams, bound_fraction, observe_fluorescence


def _hill(c, Kd=0.2, n=2.5):
    return c**n / (c**n + Kd**n)


def test_constant_calcium_gives_hill_equilibrium_and_bleach_drift():
    ind = IndicatorParams()
    ts = jnp.linspace(0.0, 300_000.0, 301)
    for c in (0.073, 0.3):
        tr = observe_fluorescence(ts, jnp.full(ts.shape, c), ind)
        np.testing.assert_allclose(tr.bound, _hill(c), rtol=1e-12)
        F0 = 1000.0 * (1 + 9.0 * _hill(0.073))
        expect = 1000.0 * np.exp(-np.asarray(ts) / 600_000.0) * (1 + 9.0 * _hill(c)) / F0 - 1.0
        np.testing.assert_allclose(tr.dff_mean, expect, rtol=1e-12, atol=1e-14)
    # at rest, dF/F is the bleaching drift alone
    tr = observe_fluorescence(ts, jnp.full(ts.shape, 0.073), ind)
    np.testing.assert_allclose(tr.dff_mean, np.expm1(-np.asarray(ts) / 600_000.0), rtol=1e-12, atol=1e-14)


def test_step_response_is_exponential_with_binding_rate():
    """Calcium steps 0.05 -> 0.4 µM between samples 999 and 1000 ms: before, b stays on the
    Hill curve; from 1000 ms on, it relaxes to the new equilibrium at rate k_on Ca^n + k_off."""
    ts = jnp.arange(0.0, 3000.0, 1.0)
    ca = jnp.where(ts < 1000.0, 0.05, 0.4)
    b = np.asarray(bound_fraction(ts, ca, IndicatorParams()))
    np.testing.assert_allclose(b[:1000], _hill(0.05), rtol=1e-12)
    k = 0.002 * (0.4 / 0.2) ** 2.5 + 0.002
    t = np.asarray(ts)[1000:]
    expect = _hill(0.4) + (b[1000] - _hill(0.4)) * np.exp(-k * (t - 1000.0))
    np.testing.assert_allclose(b[1000:], expect, rtol=1e-10)
    assert b[1000] < 0.5 * _hill(0.4)  # the indicator lags the calcium step


def test_binding_kinetics_match_scipy():
    """Smooth calcium (two pulses on a baseline), sampled every 5 ms, vs solve_ivp of the
    binding ODE with the exact calcium function."""
    def ca_fn(t):
        return 0.07 + 0.35 * np.exp(-(((t - 4000.0) / 800.0) ** 2)) + 0.2 * np.exp(-(((t - 11000.0) / 400.0) ** 2))

    Kd, n, koff = 0.2, 2.5, 0.002

    def rhs(t, b):
        c = ca_fn(t)
        return [koff * (c / Kd) ** n * (1 - b[0]) - koff * b[0]]

    ts = np.arange(0.0, 16000.0 + 1e-9, 5.0)
    ref = solve_ivp(rhs, (0, ts[-1]), [_hill(ca_fn(0.0))], t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14).y[0]
    b = np.asarray(bound_fraction(jnp.asarray(ts), jnp.asarray(ca_fn(ts)), IndicatorParams()))
    assert ref.max() > 0.5  # the pulses are seen
    assert np.max(np.abs(b - ref)) < 1e-4 * ref.max()


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_shot_noise_statistics(noise):
    ind = IndicatorParams(F_min=400.0, sigma_read=5.0)
    ts = jnp.arange(40_000.0)
    ca = jnp.full(ts.shape, 0.15)
    tr = observe_fluorescence(ts, ca, ind, key=jax.random.PRNGKey(3), noise=noise)
    resid = np.asarray(tr.F - tr.F_mean)
    var = np.asarray(tr.F_mean) + 25.0
    z = resid / np.sqrt(var)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1.0) < 0.03
    if noise == "poisson":  # counts + read noise: not integers, but the mean count is right
        assert abs(resid.mean()) < 4 * np.sqrt(var.mean() / z.size)


def test_gradient_wrt_indicator_parameters_matches_finite_differences():
    ts = jnp.linspace(0.0, 20_000.0, 2001)
    ca = 0.07 + 0.3 * jnp.sin(2 * jnp.pi * ts / 8000.0) ** 2

    def loss(theta):
        ind = IndicatorParams(Kd=theta[0], k_off=theta[1])
        return jnp.mean(observe_fluorescence(ts, ca, ind).dff_mean ** 2)

    theta = jnp.asarray([0.2, 0.002])
    g = np.asarray(jax.grad(loss)(theta))
    for i in range(2):
        h = 1e-5 * float(theta[i])
        e = jnp.zeros(2).at[i].set(h)
        fd = (float(loss(theta + e)) - float(loss(theta - e))) / (2 * h)
        assert abs(g[i] - fd) <= 1e-6 * abs(fd) + 1e-12, (i, g[i], fd)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: IndicatorParams(Kd=0.0), "Kd"),
        (lambda: IndicatorParams(R=1.0), "R"),
        (lambda: IndicatorParams(sigma_read=-1.0), "sigma_read"),
        (lambda: IndicatorParams().replace(kd=1.0), "unknown indicator"),
        (lambda: observe_fluorescence(jnp.arange(3.0), jnp.ones(4)), "ca"),
        (lambda: observe_fluorescence(jnp.arange(3.0), jnp.ones(3), noise="shot"), "noise"),
    ],
)
def test_bad_input_raises_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
