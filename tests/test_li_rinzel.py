"""Li--Rinzel astrocyte (astrojax.astro) against an independent scipy solution, finite
differences, and its own batching/precision contracts. No NEST needed (see
test_li_rinzel_nest.py for the NEST parity test)."""
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from astrojax.astro import (
    RESULTS,
    LiRinzelParams,
    LiRinzelState,
    RateInput,
    SpikeInput,
    ip3_trace,
    sic_current,
    simulate_li_rinzel,
)

# ---------------------------------------------------------------------------------------
# Independent reference: NEST's equations typed again from its documentation, in plain
# Python floats, solved with scipy, three state variables, IP3 integrated numerically and
# incremented at each spike (no closed form, nothing imported from astrojax).
# ---------------------------------------------------------------------------------------
DEFAULTS = dict(Ca_tot=2.0, IP3_0=0.16, Kd_IP3_1=0.13, Kd_IP3_2=0.9434, Kd_act=0.08234, Kd_inh=1.049,
                Km_SERCA=0.1, SIC_scale=1.0, SIC_th=0.19669, delta_IP3=0.0002, k_IP3R=0.0002,
                rate_IP3R=0.006, rate_L=0.00011, rate_SERCA=0.0009, ratio_ER_cyt=0.185, tau_IP3=7142.0)


def reference_rhs(P, rate=0.0):
    def f(t, y):
        ip3, ca, h = y
        ca = min(max(ca, 0.0), P["Ca_tot"])
        ca_er = (P["Ca_tot"] - ca) / P["ratio_ER_cyt"]
        m = ip3 / (ip3 + P["Kd_IP3_1"])
        n = ca / (ca + P["Kd_act"])
        j_chan = P["ratio_ER_cyt"] * P["rate_IP3R"] * (m * n * h) ** 3 * (ca_er - ca)
        j_leak = P["ratio_ER_cyt"] * P["rate_L"] * (ca_er - ca)
        j_pump = P["rate_SERCA"] * ca * ca / (P["Km_SERCA"] ** 2 + ca * ca)
        a_h = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])
        b_h = P["k_IP3R"] * ca
        return [(P["IP3_0"] - ip3) / P["tau_IP3"] + P["delta_IP3"] * rate,
                j_chan - j_pump + j_leak,
                a_h * (1 - h) - b_h * h]
    return f


def reference_solve(P, spike_times, weight, t_eval, y0=None, rate=0.0):
    """Segment by segment between spike arrivals; values at a spike time are post-jump."""
    y = np.array(y0 or [P["IP3_0"], 0.073, 0.793], float)
    t_eval = np.asarray(t_eval, float)
    t_end = t_eval[-1]
    out = np.full((3, t_eval.size), np.nan)
    arrivals, counts = np.unique(np.asarray(spike_times, float), return_counts=True)
    keep = (arrivals > 0) & (arrivals <= t_end)
    arrivals, counts = arrivals[keep], counts[keep]
    f = reference_rhs(P, rate)
    edges = np.concatenate([[0.0], arrivals, [t_end]])
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if b > a:
            sol = solve_ivp(f, (a, b), y, method="DOP853", rtol=1e-12, atol=1e-15, dense_output=True)
            assert sol.success
            sel = (t_eval >= a) & (t_eval < b)
            if sel.any():
                out[:, sel] = sol.sol(t_eval[sel])
            y = sol.y[:, -1].copy()
        if i < len(arrivals):  # b is a spike arrival: jump, and the state at b is post-jump
            y[0] += P["delta_IP3"] * weight * counts[i]
    out[:, t_eval == t_end] = y[:, None]
    return out  # rows IP3, Ca_astro, h_IP3R


def _poisson(rate_per_ms, T, seed, grid=0.1):
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_per_ms * T)
    return np.round(np.sort(rng.uniform(grid, T, n)) / grid) * grid


def _max_rel(x, ref):
    x, ref = np.asarray(x, float), np.asarray(ref, float)
    return float(np.max(np.abs(x - ref) / np.abs(ref)))


# 20 s of model time, Poisson input at 20 Hz of weight 10: IP3 climbs from 0.16 into the
# oscillatory range and calcium fires several spikes.
T_SCIPY = 20000.0
SPIKES = _poisson(0.02, T_SCIPY, seed=1)
TS = np.arange(1.0, T_SCIPY + 0.5, 1.0)


@pytest.fixture(scope="module")
def scipy_ref():
    return reference_solve(DEFAULTS, SPIKES, 10.0, TS)


@pytest.fixture(scope="module")
def default_run():
    return simulate_li_rinzel(LiRinzelParams(), SpikeInput(SPIKES, 10.0), jnp.asarray(TS))


def test_matches_scipy_reference_spike_input(scipy_ref, default_run):
    sol = default_run
    assert sol.ok
    ca = np.asarray(sol.Ca_astro)
    assert ca.max() > 0.3 and ca.min() < 0.1, "the test input must drive calcium spikes"
    for row, name in enumerate(["IP3", "Ca_astro", "h_IP3R"]):
        err = _max_rel(getattr(sol, name), scipy_ref[row])
        assert err < 1e-6, (name, err)


def test_matches_scipy_reference_nondefault_parameters():
    rng = np.random.default_rng(7)
    P = {k: v * float(rng.uniform(0.8, 1.25)) for k, v in DEFAULTS.items()}
    spikes = _poisson(0.03, 8000.0, seed=3)
    ts = np.arange(0.5, 8000.0, 2.5)
    y0 = [0.3, 0.12, 0.6]
    ref = reference_solve(P, spikes, 7.0, ts, y0=y0)
    sol = simulate_li_rinzel(LiRinzelParams(**P), SpikeInput(spikes, 7.0), jnp.asarray(ts),
                             y0=LiRinzelState(*map(jnp.asarray, y0)), solver=dfx.Kvaerno5())
    assert sol.ok
    for row, name in enumerate(["IP3", "Ca_astro", "h_IP3R"]):
        assert _max_rel(getattr(sol, name), ref[row]) < 1e-6, name


def test_rate_input_matches_scipy():
    """Piecewise-constant J_syn (weight/ms): a 4 s pulse of rate 0.1 from 1 s to 5 s."""
    ts = np.linspace(0.0, 12000.0, 601)
    on = reference_solve(DEFAULTS, [], 0.0, ts, rate=0.0)
    # three phases, each its own constant rate
    P = DEFAULTS
    y = [P["IP3_0"], 0.073, 0.793]
    ref = np.empty((3, ts.size))
    for (a, b, r) in [(0.0, 1000.0, 0.0), (1000.0, 5000.0, 0.1), (5000.0, 12000.0, 0.0)]:
        sol = solve_ivp(reference_rhs(P, r), (a, b), y, method="DOP853", rtol=1e-12, atol=1e-15,
                        dense_output=True)
        sel = (ts >= a) & (ts <= b)
        ref[:, sel] = sol.sol(ts[sel])
        y = list(sol.y[:, -1])
    assert not np.allclose(ref[0], on[0])  # the drive changes IP3
    out = simulate_li_rinzel(LiRinzelParams(), RateInput([1000.0, 5000.0], [0.1]), jnp.asarray(ts))
    for row, name in enumerate(["IP3", "Ca_astro", "h_IP3R"]):
        assert _max_rel(getattr(out, name), ref[row]) < 1e-6, name


def test_vector_field_matches_reference_equations():
    """Pointwise, at random states (calcium also outside [0, Ca_tot], where NEST clips), with
    a continuous drive J_syn and a calcium current J_noise."""
    from astrojax.astro import li_rinzel_vector_field

    rng = np.random.default_rng(0)
    P = {k: v * float(rng.uniform(0.8, 1.25)) for k, v in DEFAULTS.items()}
    p = LiRinzelParams(**P)
    for ip3, ca, h in [(0.3, 0.1, 0.7), (1.2, 0.6, 0.2), (0.05, -0.01, 0.9), (0.5, 2.6, 0.5)]:
        ref = reference_rhs(P, rate=0.7)(0.0, [ip3, ca, h])
        ref[1] += 1e-4  # J_noise
        d = li_rinzel_vector_field(0.0, LiRinzelState(*map(jnp.asarray, (ip3, ca, h))), p, J_syn=0.7, J_noise=1e-4)
        np.testing.assert_allclose([float(d.IP3), float(d.Ca_astro), float(d.h_IP3R)], ref, rtol=1e-13, atol=1e-18)


def test_ip3_closed_form_jumps_are_right_continuous():
    p = LiRinzelParams()
    ts = jnp.asarray([9.999, 10.0, 10.001, 20.0])
    ip3 = np.asarray(ip3_trace(p, SpikeInput([10.0, 10.0, 30.0], 100.0), ts))
    base = 0.16
    np.testing.assert_allclose(ip3[0], base, rtol=1e-14)
    jump = 2 * 100.0 * 0.0002
    np.testing.assert_allclose(ip3[1], base + jump, rtol=1e-14)
    np.testing.assert_allclose(ip3[3], base + jump * math.exp(-10.0 / 7142.0), rtol=1e-14)


def test_sic_output_formula():
    p = LiRinzelParams(SIC_scale=2.0)
    ca = jnp.asarray([0.1, 0.19669 + 0.0009, 0.19669 + 0.5])
    sic = np.asarray(sic_current(ca, p))
    np.testing.assert_allclose(sic, [0.0, 0.0, 2.0 * math.log(500.0)], rtol=1e-12, atol=1e-12)


def test_gradient_matches_finite_differences():
    """d/dtheta of the mean calcium over 10 s of Poisson drive, for theta = rate_IP3R (in the
    Ca/h vector field) and delta_IP3 (in the exact IP3 response), vs central differences."""
    spikes = _poisson(0.02, 10000.0, seed=2)
    ts = jnp.linspace(100.0, 10000.0, 200)
    inp = SpikeInput(spikes, 10.0)
    names = ("rate_IP3R", "delta_IP3")

    @jax.jit
    @jax.value_and_grad
    def loss(theta):
        p = LiRinzelParams().replace(**dict(zip(names, theta)))
        return jnp.mean(simulate_li_rinzel(p, inp, ts, rtol=1e-12, atol=1e-14).Ca_astro)

    theta = jnp.asarray([float(getattr(LiRinzelParams(), n)) for n in names])
    _, g = loss(theta)
    for i, n in enumerate(names):
        h = 1e-4 * theta[i]
        e = jnp.zeros(2).at[i].set(h)
        fd = (float(loss(theta + e)[0]) - float(loss(theta - e)[0])) / (2 * float(h))
        assert abs(fd) > 0
        assert abs(float(g[i]) - fd) <= 1e-5 * abs(fd), (n, float(g[i]), fd)


def test_vmap_over_astrocytes_matches_reference_per_member():
    """Three astrocytes with their own parameters and ragged spike trains (padded by
    SpikeInput.from_lists, one of them empty) in one vmapped solve; each member matches its
    own scipy reference, so the padding is inert."""
    trains = [_poisson(r, 5000.0, seed=s) for r, s in [(0.01, 1), (0.03, 2), (0.0, 3)]]
    serca = (0.0008, 0.0009, 0.001)
    batch = SpikeInput.from_lists(trains, weights=10.0)
    params = jax.tree.map(lambda *x: jnp.stack(x), *[LiRinzelParams(rate_SERCA=v) for v in serca])
    ts = np.linspace(0.0, 5000.0, 101)
    out = jax.jit(jax.vmap(lambda p, i: simulate_li_rinzel(p, i, jnp.asarray(ts))))(params, batch)
    assert bool(jnp.all(out.ok))
    assert float(jnp.ptp(out.IP3[1])) > 0.1 and float(jnp.ptp(out.IP3[2])) == 0.0
    for b in range(3):
        ref = reference_solve(dict(DEFAULTS, rate_SERCA=serca[b]), trains[b], 10.0, ts)
        for row, name in enumerate(["IP3", "Ca_astro", "h_IP3R"]):
            assert _max_rel(getattr(out, name)[b], ref[row]) < 1e-6, (b, name)


def test_float32_close_to_float64(default_run):
    out = simulate_li_rinzel(LiRinzelParams(dtype=jnp.float32), SpikeInput(np.float32(SPIKES), 10.0),
                             jnp.asarray(TS, jnp.float32))
    assert out.Ca_astro.dtype == jnp.float32 and out.ok
    assert _max_rel(out.Ca_astro, default_run.Ca_astro) < 1e-3
    assert _max_rel(out.h_IP3R, default_run.h_IP3R) < 1e-3


def test_step_budget_exhaustion_is_reported_not_silent():
    sol = simulate_li_rinzel(LiRinzelParams(), SpikeInput(_poisson(0.05, 5000.0, 5), 10.0),
                             jnp.linspace(0.0, 5000.0, 11), max_steps=20)
    assert not bool(sol.ok)
    assert sol.result == RESULTS.max_steps_reached
    assert sol.stats["diffrax_result"] == dfx.RESULTS.max_steps_reached
    assert int(sol.num_steps) == 20
    assert np.isnan(np.asarray(sol.Ca_astro)[-1])  # unreached samples are NaN, not stale values
    assert "max_steps" in sol.message


def test_result_codes_extend_the_core_codes():
    """astro.RESULTS holds every code of astrojax.integrate.RESULTS (promote maps them) plus
    solver_failed; Diffrax failures other than the step budget and non-finite inputs map
    to their own codes; a successful solve reports successful with consistent step counts."""
    from astrojax.integrate import RESULTS as core

    for name in ("successful", "nonfinite_input", "max_steps_reached"):
        assert RESULTS.promote(getattr(core, name)) == getattr(RESULTS, name)
    ts = jnp.linspace(0.0, 2000.0, 5)
    # one vmapped solve: a normal member and one with a NaN parameter
    out = jax.vmap(lambda r: simulate_li_rinzel(LiRinzelParams().replace(rate_SERCA=r),
                                                SpikeInput([100.0, 900.0], 10.0), ts))(jnp.asarray([0.0009, jnp.nan]))
    ok = jax.tree.map(lambda x: x[0], out)
    assert ok.result == RESULTS.successful and ok.message == ""
    assert int(ok.stats["num_steps"]) == int(ok.stats["num_accepted_steps"]) + int(ok.stats["num_rejected_steps"])
    bad = jax.tree.map(lambda x: x[1], out)
    assert bad.result == RESULTS.nonfinite_input and np.all(np.isnan(np.asarray(bad.Ca_astro)))
    assert int(bad.num_steps) < 100  # frozen, not max_steps of rejected NaN steps
    np.testing.assert_array_equal(np.asarray(out.ok), [True, False])
    # every Diffrax code maps to exactly one astro code
    from astrojax.astro.li_rinzel import _map_diffrax_result

    T, F = jnp.asarray(True), jnp.asarray(False)
    expect = {"successful": "successful", "max_steps_reached": "max_steps_reached"}
    for name in dfx.RESULTS._name_to_item:
        got = _map_diffrax_result(getattr(dfx.RESULTS, name), T, T)
        assert got == getattr(RESULTS, expect.get(name, "solver_failed")), name
    assert _map_diffrax_result(dfx.RESULTS.successful, T, F) == RESULTS.solver_failed  # NaN output
    assert _map_diffrax_result(dfx.RESULTS.successful, F, T) == RESULTS.nonfinite_input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LiRinzelParams(Ca_tot=0.0), "Ca_tot"),
        (lambda: LiRinzelParams(rate_SERCA=-1.0), "rate_SERCA"),
        (lambda: LiRinzelParams().replace(tau_ip3=1.0), "unknown parameter"),
        (lambda: SpikeInput([1.0, 2.0], [1.0, -1.0]), "weights"),
        (lambda: SpikeInput([[[1.0]]]), "times"),
        (lambda: simulate_li_rinzel(LiRinzelParams(), SpikeInput([[1.0], [2.0]]), jnp.asarray([1.0])), "vmap"),
        (lambda: RateInput([0.0, 1.0], [1.0, 2.0]), "edges"),
        (lambda: simulate_li_rinzel(LiRinzelParams(), None, jnp.asarray([2.0, 1.0])), "sorted"),
        (lambda: simulate_li_rinzel(LiRinzelParams(), None, jnp.asarray([1.0]), t0=5.0), "t0"),
        (lambda: simulate_li_rinzel(LiRinzelParams(), [1.0], jnp.asarray([1.0])), "inputs"),
    ],
)
def test_bad_input_raises_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_from_nest_round_trip():
    p = LiRinzelParams(IP3_0=0.3, tau_IP3=5000.0)
    q = LiRinzelParams.from_nest({**p.to_nest(), "Ca_astro": 0.1, "model": "astrocyte_lr_1994"})
    assert eqx.tree_equal(p, q)


# ---------------------------------------------------------------------------------------
# Oscillations at constant IP3 (IP3_0 = IP3(0) = IP3, no input)
# ---------------------------------------------------------------------------------------
def _reference_steady_state(ip3):
    """Root of dCa/dt with h at its nullcline, from the reference equations (brentq)."""
    from scipy.optimize import brentq

    P = dict(DEFAULTS, IP3_0=ip3)
    f = reference_rhs(P)

    def h_inf(c):
        a = P["k_IP3R"] * P["Kd_inh"] * (ip3 + P["Kd_IP3_1"]) / (ip3 + P["Kd_IP3_2"])
        return a / (a + P["k_IP3R"] * c)

    c = brentq(lambda c: f(0.0, [ip3, c, h_inf(c)])[1], 1e-9, P["Ca_tot"] - 1e-9, xtol=1e-15)
    return c, h_inf(c)


def _reference_trace_of_jacobian(ip3, eps=1e-7):
    """Trace of the (Ca, h) Jacobian at the steady state by central differences = 2 Re(lambda)
    when the eigenvalues are complex."""
    f = reference_rhs(dict(DEFAULTS, IP3_0=ip3))
    c, h = _reference_steady_state(ip3)
    dca = (f(0, [ip3, c + eps, h])[1] - f(0, [ip3, c - eps, h])[1]) / (2 * eps)
    dh = (f(0, [ip3, c, h + eps])[2] - f(0, [ip3, c, h - eps])[2]) / (2 * eps)
    return dca + dh


def test_steady_state_and_hopf_points_match_reference():
    from astrojax.astro.oscillations import hopf_points, steady_state, steady_state_eigenvalues

    p = LiRinzelParams()
    for ip3 in (0.2, 0.5, 1.0):
        ca, h = steady_state(p, ip3)
        c_ref, h_ref = _reference_steady_state(ip3)
        np.testing.assert_allclose([float(ca), float(h)], [c_ref, h_ref], rtol=1e-10)
        ev = np.asarray(steady_state_eigenvalues(p, ip3))
        if abs(ev[0].imag) > 0:
            np.testing.assert_allclose(ev[0].real, _reference_trace_of_jacobian(ip3) / 2, rtol=1e-5)
    hopf = hopf_points(p, 0.0, 3.0, 301)
    assert hopf.shape == (2,)
    for x in hopf:  # the reference's Re(lambda) changes sign across each point
        assert _reference_trace_of_jacobian(x - 1e-4) * _reference_trace_of_jacobian(x + 1e-4) < 0
    assert _reference_trace_of_jacobian(0.5) > 0 > _reference_trace_of_jacobian(0.2)


def test_constant_ip3_steady_state_below_range_oscillations_inside():
    """IP3 = 0.2 µM (below the oscillatory range): calcium settles on the steady state.
    IP3 = 0.5 µM (inside): sustained oscillations, same amplitude 100 s apart."""
    from astrojax.astro.oscillations import oscillation_features

    ip3 = jnp.asarray([0.2, 0.5])
    ts = jnp.arange(100_000.0, 300_000.0 + 1.0, 20.0)  # ms: 100-300 s

    def run(x):
        return simulate_li_rinzel(eqx.tree_at(lambda q: q.IP3_0, LiRinzelParams(), x), None, ts)

    out = jax.jit(jax.vmap(run))(ip3)
    assert bool(jnp.all(out.ok))
    ts_np = np.asarray(ts)
    low, mid = np.asarray(out.Ca_astro[0]), np.asarray(out.Ca_astro[1])
    c_ref, _ = _reference_steady_state(0.2)
    assert np.max(np.abs(low[ts_np >= 200_000.0] - c_ref)) < 1e-6 * c_ref
    a = oscillation_features(ts_np[ts_np < 200_000.0], mid[ts_np < 200_000.0])
    b = oscillation_features(ts_np[ts_np >= 200_000.0], mid[ts_np >= 200_000.0])
    assert b["amplitude"] > 0.2 and b["n_peaks"] >= 7
    assert abs(b["amplitude"] - a["amplitude"]) < 1e-3 * a["amplitude"]  # sustained, not decaying
    assert abs(b["period_ms"] - a["period_ms"]) < 0.01 * a["period_ms"]
    assert 0.05 < b["frequency_hz"] < 0.2
